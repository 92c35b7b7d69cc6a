"""Sweeps: measure time, memory and error of attention variants across sequence lengths.

Read it top down: a sweep (`sweep.run_sweep`, `tasksweep`, `maxlen`) is chains of jobs run by one
runner (`runner`) on an executor (`executors`), in a measuring process (`worker`); a job measures
a group of points (`group`), each prepared in stages (`point`, `decode`: `levels` and `spec` say
what is built, `exactness` and `validate` what is checked, `measure` and `load` what is read off
the machine), timed in interleaved rounds (`timing`), and written as a `measurement`.
"""

from .executors import LocalExecutor, RayExecutor
from .group import measure_group, measure_point
from .spec import PointSpec, SweepSpec
from .sweep import run_sweep
from .timing import time_interleaved

__all__ = [
    "LocalExecutor",
    "RayExecutor",
    "PointSpec",
    "SweepSpec",
    "measure_group",
    "measure_point",
    "run_sweep",
    "time_interleaved",
]
