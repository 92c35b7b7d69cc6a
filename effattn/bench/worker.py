"""`python -m effattn.bench.worker`: measure one point in a fresh process (for --isolate).
Reads {"spec", "variant", "n"} as JSON on stdin, prints the row as one JSON line."""
import json
import sys

from ..spec import Variant
from .point import SweepSpec, measure_point


def main():
    job = json.loads(sys.stdin.read())
    spec = SweepSpec(**{k: v for k, v in job["spec"].items()})
    v = Variant(job["variant"]["name"], job["variant"]["options"])
    print(json.dumps(measure_point(spec, v, job["n"]), default=str))


if __name__ == "__main__":
    main()
