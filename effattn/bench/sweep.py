"""The timing sweep: every (variant, length) point measured, each row written and fsynced at once.

Points are measured in groups (`effattn.bench.group`): on the local executor a group is every
variant of one length, timed interleaved in one process, so that a load that comes and goes
lands on all of them alike; on a concurrent executor (Ray) a group is one point, so that
variants run side by side on the cluster (each point's rounds are still bracketed by the
reference kernel, so load is detected and flagged, but two points are not interleaved).

A chain (`LengthChain`) goes length by length, shortest first: after an `oom` or `timeout` at n,
its variants' longer lengths are recorded as `skipped` without being attempted. Locally one
chain holds every variant; on a concurrent executor each variant is its own chain. Resuming
skips the points already done (`effattn.store.DONE_STATUSES`); an oom or timeout recorded under
another memory budget or timeout says nothing about this run's limits and is measured again.
"""

from __future__ import annotations

import statistics
import sys

from ..env import environment
from ..errors import EffattnError
from ..spec import Variant
from ..store import read_results
from . import load
from .executors import Job, LocalExecutor
from .group import measure_group
from .runner import Chain, Resumed, Runner, Step, isolation_for, log_line, open_results
from .spec import SweepSpec, base_row
from .worker import MeasuringProcess

STOPPING = ("oom", "timeout")


def read_rows(path: str) -> list[dict]:
    """Rows of a results file (lines that are no results row are left out)."""
    return read_results(path)[0]


def group_job(spec, variants, n, isolation="process", worker=None, baseline_gflops=None) -> list[dict]:
    """One group - these variants at length n, timed interleaved - measured where `isolation`
    says; one row per variant. A variant that crashes or hangs the measuring process is recorded
    as such and the others are measured again without it. Runs wherever the executor puts it:
    here, or on a Ray worker (which always asks for a fresh process)."""
    if isolation == "none":
        return measure_group(spec, variants, n, baseline_gflops=baseline_gflops)
    mp = worker or MeasuringProcess("the isolated process")
    rows, todo = [], list(variants)
    try:
        while todo:
            base = {v.label: base_row(spec, v, n) for v in todo}
            job = {
                "spec": spec.point_config(),
                "variants": [{"name": v.name, "options": v.options} for v in todo],
                "n": n,
                "baseline_gflops": baseline_gflops,
            }
            got, redo = mp.run(job, spec.timeout_s, base)
            rows += got
            todo = [v for v in todo if v.label in redo]
    finally:
        if worker is None:
            mp.close()
    order = {v.label: i for i, v in enumerate(variants)}
    return sorted(rows, key=lambda r: order.get(r.get("label"), len(order)))


def run_worker(spec: SweepSpec, variant: Variant, n: int, label: str = "the isolated process") -> dict:
    """Measure one point in a fresh process (crash, hang and OOM kill cost only this point)."""
    return group_job(spec, [variant], n, "process", MeasuringProcess(label))[0]


class MachineBusy(EffattnError):
    """`require_quiet`: the machine did not become quiet, or a group stayed loaded (exit 3)."""

    exit_code = 3


def quiet_group_job(spec, variants, n, isolation, worker, baseline_gflops, wait_s: float, log=None) -> list[dict]:
    """`group_job` on a quiet machine only (`require_quiet`): wait for quiet before the group,
    measure it again while its points come back loaded, and give up with MachineBusy after
    load.QUIET_TRIES tries (nothing of a loaded try is kept)."""
    import torch

    threads, why = torch.get_num_threads(), None
    for _ in range(load.QUIET_TRIES):
        busy = load.wait_for_quiet(threads, wait_s, log=log)
        if busy:
            raise MachineBusy(f"--require-quiet: the machine was not quiet within {wait_s:g} s ({busy})")
        rows = group_job(spec, variants, n, isolation, worker, baseline_gflops)
        loaded = [r for r in rows if r.get("loaded") is True]
        if not loaded:
            return rows
        why = "; ".join(loaded[0].get("load_reasons") or ["too few quiet rounds"])
        if log:
            log(f"--require-quiet: n={n} was measured on a busy machine ({why}); measuring it again")
    raise MachineBusy(
        f"--require-quiet: n={n} was measured on a busy machine {load.QUIET_TRIES} times ({why}); its rows were "
        "not kept"
    )


def machine_mismatch(rows: list[dict], env: dict) -> str | None:
    """Why rows measured before cannot be fitted with rows measured here (another host, CPU or
    thread count), or None. Task rows and rows from a cluster (Ray) are not judged."""
    mine = (env.get("host"), env.get("cpu"), env.get("threads"))
    for r in rows:
        e = r.get("env")
        if r.get("kind") == "task" or r.get("executor") == "ray" or not isinstance(e, dict):
            continue
        theirs = (e.get("host"), e.get("cpu"), e.get("threads"))
        if theirs != mine:
            return (
                f"its points were measured on {theirs[0]} ({theirs[1]}) with {theirs[2]} thread(s); this run would "
                f"measure on {mine[0]} ({mine[1]}) with {mine[2]}: their times cannot be fitted together"
            )
    return None


class LineProgress:
    """Progress as plain lines, one per finished point, on a stream (stderr by default): what a
    log file or a pipe can hold. A reporter is any object with `begin(total)`, `start(label, n,
    running)`, `finish(row)` and `close()`; the CLI passes one that draws a bar on a terminal."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.total = self.done = 0

    def begin(self, total: int):
        self.total, self.done = total, 0

    def start(self, label: str, n: int, running: int = 1):
        pass

    def finish(self, row: dict):
        self.done += 1
        self.stream.write(f"[{self.done}/{self.total}] {point_line(row)}\n")
        self.stream.flush()

    def close(self):
        pass


def point_line(row: dict) -> str:
    """One finished point, as progress shows it: `label n=N: status time (reason) FAULT: ...`."""
    t = f"{row['time_ms']:.2f} ms" if row.get("time_ms") is not None else ""
    why = f" ({row['reason']})" if row.get("reason") and row["status"] != "ok" else ""
    flag = f" FAULT: {row['fault']}" if row.get("fault") else ""
    return f"{row['label']} n={row['seq_len']}: {row['status']} {t}".rstrip() + why + flag


def _same_limits(spec: SweepSpec):
    """Whether an oom or timeout row was recorded under the limits this spec sets."""

    def holds(row: dict) -> bool:
        if row.get("status") == "oom":
            return row.get("memory_budget_bytes") == spec.memory_budget_bytes
        if row.get("status") == "timeout":
            return row.get("timeout_s") == spec.timeout_s
        return True

    return holds


class LengthChain(Chain):
    """These variants, length by length, shortest first; a variant stopped by an oom or timeout
    has its longer lengths recorded as `skipped`. `job_of(variants, n)` makes a group's job."""

    def __init__(self, spec: SweepSpec, variants, resumed: Resumed, job_of):
        self.spec, self.variants, self.job_of = spec, list(variants), job_of
        self.stopped: dict[str, tuple[str, int]] = {}  # label -> (status, n) that ends its chain
        self.need: dict[int, list[Variant]] = {}
        self.remeasured = 0
        holds = _same_limits(spec)
        for v in self.variants:
            for n in spec.seq_lens:
                ident = base_row(spec, v, n)
                done = resumed.done(ident, holds)
                if done is None and (prev := resumed.row(ident)) is not None:
                    self.remeasured += prev.get("status") in STOPPING and not holds(prev)
                    if prev.get("status") == "skipped" and v.label in self.stopped and self.stopped[v.label][1] < n:
                        continue
                if done is not None:
                    if done["status"] in STOPPING:
                        self.stopped.setdefault(v.label, (done["status"], n))
                    continue
                self.need.setdefault(n, []).append(v)
        self.total = sum(len(vs) for vs in self.need.values())
        self.lengths = iter(spec.seq_lens)

    def next(self) -> Step:
        skipped = []
        for n in self.lengths:
            group = []
            for v in self.need.get(n, []):
                if v.label in self.stopped and self.stopped[v.label][1] < n:
                    st, at = self.stopped[v.label]
                    skipped.append({**base_row(self.spec, v, n), "status": "skipped", "reason": f"{st} at n={at}"})
                else:
                    group.append(v)
            if group:
                return Step(skipped, self.job_of(group, n))
        return Step(skipped)

    def finished(self, job: Job, rows) -> list[dict]:
        n, group = job.info[1]
        if isinstance(rows, dict):  # an executor's own failure row for the whole job
            rows = [{**base_row(self.spec, v, n), **{k: rows[k] for k in ("status", "reason") if k in rows}}
                    for v in group]  # fmt: skip
        for row in rows:
            label = row["label"]
            if row.get("status") in STOPPING and (label not in self.stopped or n < self.stopped[label][1]):
                self.stopped[label] = (row["status"], n)
        return rows


def run_sweep(
    spec: SweepSpec,
    out,
    *,
    resume: bool = False,
    overwrite: bool = False,
    isolate: bool = False,
    isolation: str = "worker",
    progress=True,
    run_id: str | None = None,
    executor=None,
    on_row=None,
    log=log_line,
    worker: MeasuringProcess | None = None,
    require_quiet: bool = False,
    quiet_wait_s: float = 120.0,
) -> list[dict]:
    """Measure every point not yet done in `out` (a path or an open `ResultsFile`); return this
    run's rows. `executor`: where groups run (default: here, one at a time). `isolation`: in one
    reused measuring process ("worker"), a fresh one per group ("process", `isolate`), or here
    ("none": no timeout for a hung call; for debugging and the Python API). `progress`: True for
    a line per point on stderr (`LineProgress`), False for none, or a reporter of one's own.
    `require_quiet`: measure on a quiet machine only, waiting up to `quiet_wait_s` for it before
    each group (`quiet_group_job`; local executor only). Resuming a file measured on another
    machine or thread count raises EffattnError."""
    executor = executor or LocalExecutor()
    isolation = isolation_for(isolation, isolate, executor)
    concurrent = getattr(executor, "concurrent", False)
    if require_quiet and concurrent:
        raise EffattnError("require_quiet judges this machine's load: it needs the local executor")
    rf = open_results(out, resume=resume, overwrite=overwrite, executor=executor.name, run_id=run_id, log=log)
    mismatch = None if concurrent else machine_mismatch(rf.existing, environment())
    if mismatch:
        rf.close()
        raise EffattnError(f"cannot resume {rf.path}: {mismatch}; measure into another --out")
    if isolation != "worker" and worker is not None:
        worker.kill()
    groups = _Groups(spec, isolation, concurrent, (quiet_wait_s, log) if require_quiet else None)
    runner = Runner(rf, executor, _reporter(progress), on_row, stamp=groups.stamp, device=spec.device)
    runner.worker = groups.worker = (worker or MeasuringProcess()) if isolation == "worker" else None
    resumed = Resumed(rf.existing)
    split = [[v] for v in spec.variants] if concurrent else [spec.variants]
    chains = [LengthChain(spec, vs, resumed, groups.job) for vs in split]
    remeasured = sum(c.remeasured for c in chains)
    if remeasured and log:
        log(
            f"{rf.path}: {remeasured} point(s) ended oom or timeout under another --memory-budget or "
            "--timeout; measuring them again under this run's"
        )
    try:
        return runner.run(chains, groups.describe)
    finally:
        runner.close()


class _Groups:
    """How a timing sweep's groups become jobs, and what each row is stamped with: where it ran,
    and (locally) the quiet reference rates of this run's groups, whose median is the bar for the
    next groups' load detection (a median, so one group measured in a burst cannot raise it; Ray's
    nodes differ in speed, so not there)."""

    def __init__(self, spec: SweepSpec, isolation: str, concurrent: bool, quiet: tuple | None):
        self.spec, self.isolation, self.concurrent, self.quiet = spec, isolation, concurrent, quiet
        self.worker: MeasuringProcess | None = None
        self.bars: list[float] = []
        self.seen_groups: set = set()

    def job(self, group: list[Variant], n: int) -> Job:
        base = statistics.median(self.bars) if self.bars else None
        args = (self.spec, group, n, self.isolation, self.worker, base)
        if self.quiet is not None:
            return Job(n, quiet_group_job, args + self.quiet, base_row(self.spec, group[0], n), (n, group))
        return Job(n, group_job, args, base_row(self.spec, group[0], n), (n, group))

    def stamp(self, row: dict) -> None:
        row["isolation"], row["isolated"] = self.isolation, self.isolation == "process"
        if not self.concurrent and row.get("probe_best_gflops") and row.get("group_id") not in self.seen_groups:
            self.seen_groups.add(row.get("group_id"))
            self.bars.append(row["probe_best_gflops"])

    def describe(self, info) -> tuple[str, int]:
        n, group = info
        return (", ".join(v.label for v in group) if self.concurrent else f"{len(group)} variant(s)"), n


def _reporter(progress):
    return LineProgress() if progress is True else progress or None
