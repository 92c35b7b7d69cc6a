"""`python -m effattn.bench.worker`: measure one point in a fresh process (--isolate, Ray, probes).
Reads {"spec", "variant", "n", "parent"} as JSON on stdin, prints the row as one JSON line."""
import json
import os
import sys

from ..spec import Variant
from .point import SweepSpec, measure_point


def _die_with_parent(parent: int | None) -> None:
    """Ask Linux to kill this process when its parent dies (a cancelled Ray task, a killed sweep):
    an orphaned measurement would otherwise keep a core or a GPU busy for nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # the parent died before prctl took hold
        os._exit(1)


def main():
    job = json.loads(sys.stdin.read())
    _die_with_parent(job.get("parent"))
    spec = SweepSpec(**{k: v for k, v in job["spec"].items()})
    v = Variant(job["variant"]["name"], job["variant"]["options"])
    print(json.dumps(measure_point(spec, v, job["n"]), default=str))


if __name__ == "__main__":
    main()
