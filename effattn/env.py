"""The environment a measurement ran in: recorded with every result row."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def environment() -> dict:
    from . import __version__

    env = {
        "effattn": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "einops": _version("einops"),
        "xformers": _version("xformers"),
        "ray": _version("ray"),
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "gpu": None,
        "gpu_mem_bytes": None,
        "git_commit": git_commit(),
        "argv": " ".join(sys.argv),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"], env["gpu_mem_bytes"] = p.name, p.total_memory
    return env
