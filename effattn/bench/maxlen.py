"""`effattn bench --find-max-len`: the longest sequence each variant runs within a memory budget.

Doubles n until a probe fails, then bisects between the last success and the first failure
(`ProbeChain`: each probe decides the next). Each probe runs in its own process: a point whose
estimated or measured memory (inputs plus the call's peak) is over the budget is `oom`, and so is
a probe the kernel's OOM killer kills, which costs only that probe. Every probe is a row of the
results file like any sweep's (run id, environment), written by the one runner, and with
`--resume` a probe already in the file is reused, not run again. (Capping the probe's heap with
RLIMIT_DATA was tried and dropped: glibc's per-thread arenas count against it, so small budgets
failed spuriously.)
"""

from __future__ import annotations

from dataclasses import replace

from ..env import environment
from ..spec import Variant
from ..store import ResultsFile
from .executors import Job
from .runner import Chain, Resumed, Runner, Step
from .spec import SweepSpec, base_row
from .sweep import run_worker

PROBE = "find-max-len"


def probe(spec: SweepSpec, variant: Variant, n: int, budget: int) -> dict:
    spec = replace(spec, seq_lens=[n], variants=[variant], error=False, memory_budget_bytes=budget)
    row = run_worker(spec, variant, n, label="the probe")
    row.setdefault("env", environment())
    return {**row, "probe": PROBE, "memory_budget_bytes": budget}


class ProbeChain(Chain):
    """The search for one variant: n doubles from `start` while probes are ok, up to `limit`; an
    oom brackets the answer and bisection narrows it to a multiple of 64 (or a sixteenth of it).
    Only an `oom` means "over the budget": an error, timeout or unsupported probe ends the search
    there and says so (`why`)."""

    def __init__(self, spec, variant, budget, start, limit, resumed: Resumed, log=None):
        self.spec, self.variant, self.budget, self.limit, self.log = spec, variant, budget, limit, log
        self.resumed = resumed
        self.lo = self.hi = self.why = None
        self.n, self.bisecting, self.done = start, False, False
        self.rows: list[dict] = []

    def next(self) -> Step:
        while not self.done:
            n = self._next_length()
            if n is None:
                self.done = True
                break
            ident = {**base_row(self.spec, self.variant, n), "probe": PROBE}
            known = self.resumed.done(ident, lambda r: r.get("memory_budget_bytes") == self.budget)
            if known is None:
                fn_args = (self.spec, self.variant, n, self.budget)
                return Step([], Job(n, probe, fn_args, ident, n))
            self._take(known, n, reused=True)
        return Step([])

    def finished(self, job: Job, row) -> list[dict]:
        self._take(row, job.info[1], reused=False)
        return [row]

    def _next_length(self) -> int | None:
        if not self.bisecting:
            if self.n <= self.limit and self.hi is None and self.why is None:
                return self.n
            if self.lo is None or self.hi is None or self.why is not None:
                return None  # fails at the start, still fine at the limit, or stopped
            self.bisecting = True
        if self.why is not None or self.hi - self.lo <= max(64, self.lo // 16):
            return None
        mid = (self.lo + self.hi) // 2 // 64 * 64 or (self.lo + self.hi) // 2
        return None if mid in (self.lo, self.hi) else mid

    def _take(self, row: dict, n: int, reused: bool) -> None:
        self.rows.append(row)
        status = row["status"]
        if self.log:
            self.log(
                f"{self.variant.label} n={n}: {status}"
                + (" (from the file)" if reused else "")
                + (f" ({row['reason']})" if row.get("reason") else "")
            )
        if status == "ok":
            self.lo = n
            if not self.bisecting:
                self.n = n * 2
        elif status == "oom":
            self.hi = n
        else:
            self.why = f"{status} at n={n}: {row.get('reason') or ''}".rstrip(": ")


def find_max_len(
    spec: SweepSpec, variant: Variant, budget: int, start: int, limit: int, out: ResultsFile | None = None, log=None
) -> tuple[int | None, list[dict], str | None]:
    """(the longest n that fits, every probe's row, why the search stopped early or None). `out`,
    an open ResultsFile, gets each probe as it finishes; probes it already holds (same point, same
    budget) are reused."""
    resumed = Resumed(out.existing if out is not None else [])
    chain = ProbeChain(spec, variant, budget, start, limit, resumed, log)
    if out is None:
        while (step := chain.next()).job is not None:
            step.job.info = (0, step.job.info)  # (as the runner wraps it)
            chain.finished(step.job, step.job.fn(*step.job.args))
    else:
        Runner(out).run([chain])
    return chain.lo, chain.rows, chain.why
