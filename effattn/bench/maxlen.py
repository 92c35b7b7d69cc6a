"""`effattn bench --find-max-len`: the longest sequence each variant runs within a memory budget.

Doubles n until a probe fails, then bisects between the last success and the first failure. Each
probe runs in its own process: a measured peak above the budget is `oom`, and so is a probe the
kernel kills, which costs only that probe. Every probe is recorded as a row. (Capping the probe's
heap with RLIMIT_DATA was tried and dropped: glibc's per-thread arenas count against it, so small
budgets failed spuriously.)
"""
from __future__ import annotations

import json
import os
import time

from ..spec import Variant
from .point import SweepSpec
from .sweep import run_worker


def available_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * 2**30


def probe(spec: SweepSpec, variant: Variant, n: int, budget: int) -> dict:
    row = run_worker(spec, variant, n, label="probe", error=False, memory_budget_bytes=budget)
    return {**row, "probe": "find-max-len", "memory_budget_bytes": budget}


def find_max_len(spec: SweepSpec, variant: Variant, budget: int, start: int, limit: int, out=None,
                 log=None) -> tuple[int | None, list[dict]]:
    rows: list[dict] = []

    def run(n):
        row = probe(spec, variant, n, budget)
        row["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        rows.append(row)
        if out is not None:
            out.write(json.dumps(row, default=str) + "\n")
            out.flush()
            os.fsync(out.fileno())
        if log:
            log(f"{variant.label} n={n}: {row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""))
        return row["status"] == "ok"

    lo, hi, n = None, None, start
    while n <= limit:
        if run(n):
            lo, n = n, n * 2
        else:
            hi = n
            break
    if lo is None:
        return None, rows
    if hi is None:
        return lo, rows  # still fine at the limit
    while hi - lo > max(64, lo // 16):
        mid = (lo + hi) // 2 // 64 * 64 or (lo + hi) // 2
        if mid in (lo, hi):
            break
        if run(mid):
            lo = mid
        else:
            hi = mid
    return lo, rows
