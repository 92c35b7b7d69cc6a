"""`effattn bench --find-max-len`: the longest sequence each variant runs within a memory budget.

Doubles n until a probe fails, then bisects between the last success and the first failure. Each
probe runs in its own process: a point whose estimated or measured memory (inputs plus the call's
peak) is over the budget is `oom`, and so is a probe the kernel's OOM killer kills, which costs
only that probe. Every probe is a row of the results file like any sweep's (run id, environment),
and with `--resume` a probe already in the file is reused, not run again. (Capping the probe's
heap with RLIMIT_DATA was tried and dropped: glibc's per-thread arenas count against it, so small
budgets failed spuriously.)
"""

from __future__ import annotations

from dataclasses import replace

from ..env import environment
from ..spec import Variant
from ..store import DONE_STATUSES, ResultsFile, point_key
from .point import SweepSpec, base_row
from .sweep import run_worker

PROBE = "find-max-len"


def probe(spec: SweepSpec, variant: Variant, n: int, budget: int) -> dict:
    spec = replace(spec, seq_lens=[n], variants=[variant], error=False, memory_budget_bytes=budget)
    row = run_worker(spec, variant, n, label="the probe")
    row.setdefault("env", environment())
    return {**row, "probe": PROBE, "memory_budget_bytes": budget}


def find_max_len(
    spec: SweepSpec, variant: Variant, budget: int, start: int, limit: int, out: ResultsFile | None = None, log=None
) -> tuple[int | None, list[dict], str | None]:
    """(the longest n that fits, every probe's row, why the search stopped early or None). Only an
    `oom` probe means "over the budget": an `error`, `timeout` or `unsupported` probe ends the
    search there and is reported as what it is, never as the memory limit. `out`, an open
    ResultsFile, gets each probe as it finishes; probes it already holds (same point, same budget)
    are reused."""
    rows: list[dict] = []
    known = {}
    if out is not None:
        for r in out.existing:
            if r.get("probe") == PROBE and r.get("memory_budget_bytes") == budget and r.get("status") in DONE_STATUSES:
                known[point_key(r)] = r

    def run(n) -> str:
        key = point_key({**base_row(spec, variant, n), "probe": PROBE})
        row = known.get(key)
        reused = row is not None
        if row is None:
            row = probe(spec, variant, n, budget)
            if out is not None:
                row = out.append(row)
        rows.append(row)
        if log:
            log(
                f"{variant.label} n={n}: {row['status']}"
                + (" (from the file)" if reused else "")
                + (f" ({row['reason']})" if row.get("reason") else "")
            )
        return row["status"]

    def stopped(n, status):
        return f"{status} at n={n}: {rows[-1].get('reason') or ''}".rstrip(": ")

    lo, hi, n = None, None, start
    while n <= limit:
        status = run(n)
        if status == "ok":
            lo, n = n, n * 2
        elif status == "oom":
            hi = n
            break
        else:
            return lo, rows, stopped(n, status)
    if lo is None or hi is None:
        return lo, rows, None  # fails at the start, or still fine at the limit
    while hi - lo > max(64, lo // 16):
        mid = (lo + hi) // 2 // 64 * 64 or (lo + hi) // 2
        if mid in (lo, hi):
            break
        status = run(mid)
        if status == "ok":
            lo = mid
        elif status == "oom":
            hi = mid
        else:
            return lo, rows, stopped(mid, status)
    return lo, rows, None
