"""Sweeps: measure time, memory and error of attention variants across sequence lengths."""

from .executors import LocalExecutor, RayExecutor
from .point import SweepSpec
from .rounds import measure_point
from .sweep import run_sweep

__all__ = ["LocalExecutor", "RayExecutor", "SweepSpec", "measure_point", "run_sweep"]
