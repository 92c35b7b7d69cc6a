"""Synthetic tasks, generated on the fly (no download), with a registry like attention's.

A task yields batches (tokens, targets, key_padding_mask) for one of the backbone's shapes:
`lm` tasks have a target per position (-100 = not scored) for the causal decoder; `cls` tasks
have one class per sequence for the encoder.
"""

from . import listops, mqar, retrieval  # noqa: F401 - importing a task module registers it
from .base import Task, create_task, list_tasks, register_task  # noqa: F401 - the package's API
