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
    except Exception:  # noqa: BLE001 - a version that cannot be read is recorded as unknown
        return None


@lru_cache(maxsize=4)
def git_commit(package_dir: str | None = None) -> str | None:
    """The commit of the checkout effattn runs from, with "-dirty" when the package's own files
    (`package_dir`, default effattn/: its code, tracked or not) differ from that commit. Changes
    elsewhere in the checkout - above all the results file a sweep is writing, which may be
    tracked - do not change what was measured and do not make a row dirty."""
    here = package_dir or os.path.dirname(os.path.abspath(__file__))
    # a query, never a write: without this, `git status` refreshes the index under .git/index.lock,
    # which a process that cannot write (a full disk, a size limit) leaves behind for the user's git
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, env=env
        )
        if out.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", here, "status", "--porcelain", "--untracked-files=normal", "--", "."],
                capture_output=True,
                text=True,
                timeout=5,
                env=env,
            ).stdout
            code = [line for line in dirty.splitlines() if not line.rstrip().endswith(("/__pycache__/", ".pyc"))]
            return out.stdout.strip() + ("-dirty" if code else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def environment() -> dict:
    from ._version import __version__

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


def cache_dir() -> str:
    """Where effattn keeps what it learns on this machine (its usual matmul rate, the trained
    backbone of `--inputs trained`): $EFFATTN_CACHE_DIR, else $EFFATTN_CACHE (its older name),
    else $XDG_CACHE_HOME/effattn, else ~/.cache/effattn."""
    for name in ("EFFATTN_CACHE_DIR", "EFFATTN_CACHE"):
        if os.environ.get(name):
            return os.environ[name]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "effattn")
