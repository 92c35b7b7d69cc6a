"""Task registry and base class."""

from __future__ import annotations

import difflib

import torch

from ..errors import OptionError, UnknownAttentionError

_TASKS: dict[str, type] = {}
IGNORE = -100


def register_task(name: str):
    def deco(cls):
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = cls
        cls.name = name
        return cls

    return deco


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def create_task(name: str, **options) -> Task:
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; tasks: {', '.join(sorted(_TASKS))}"
        raise UnknownAttentionError(f"unknown task {name!r}{hint}")
    import inspect

    valid = [p for p in inspect.signature(_TASKS[name].__init__).parameters if p not in ("self", "seq_len")]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise OptionError(
            f"task {name!r} has no option {', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}"
        )
    return _TASKS[name](**options)


class Task:
    """Subclasses set `kind` ("lm" or "cls"), `vocab_size`, `num_classes` and implement `batch`."""

    name = "task"
    kind = "lm"
    vocab_size = 0
    num_classes = 0

    def check_length(self, seq_len: int) -> None:
        """Raise OptionError when the task cannot be laid out in seq_len tokens."""

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator):
        """-> tokens (B, n) long, targets ((B, n) for lm, (B,) for cls), key_padding_mask or None."""
        raise NotImplementedError

    def options(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
