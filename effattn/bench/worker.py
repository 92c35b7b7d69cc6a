"""`python -m effattn.bench.worker`: measure one point in a fresh process (for --isolate).
Reads {"spec", "variant", "n"} as JSON on stdin, prints the row as one JSON line."""
import json
import sys

from ..spec import Variant
from .point import SweepSpec, measure_point


def _data_segment() -> int:
    """VmData: what RLIMIT_DATA counts (far more than RSS in a process with torch loaded)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    job = json.loads(sys.stdin.read())
    if job.get("data_limit"):
        import resource

        # Cap this process's heap (malloc and anonymous mmap) so that running out of the budget
        # is a clean allocation failure here, not the kernel's OOM killer choosing a victim.
        import torch  # noqa: F401  - load the libraries before the cap
        soft = int(job["data_limit"]) + _data_segment()
        resource.setrlimit(resource.RLIMIT_DATA, (soft, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    spec = SweepSpec(**{k: v for k, v in job["spec"].items()})
    v = Variant(job["variant"]["name"], job["variant"]["options"])
    print(json.dumps(measure_point(spec, v, job["n"]), default=str))


if __name__ == "__main__":
    main()
