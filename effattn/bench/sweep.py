"""A sweep: every (variant, length) point measured, appended to JSON lines and fsynced at once.

Nothing measured is lost: each row is written the moment it exists (through `ResultsFile`, which
locks the file for the run); Ctrl-C keeps every finished row; `resume` skips the points already
done (see `effattn.store.DONE_STATUSES`). After an `oom` or `timeout` at length n, the variant's
longer lengths are recorded as `skipped` without being attempted.

Points are measured in groups (`effattn.bench.rounds`): on the local executor a group is every
variant of one length, timed interleaved in one process, so a load that comes and goes lands on
all of them alike; on a concurrent executor (Ray) a group is one point, so that variants run side
by side on the cluster (each point's rounds are still bracketed by the reference kernel, so load
is detected and flagged, but two points are not interleaved with each other).

Where groups run (`isolation`):

* "worker" (default): in one long-lived measuring process, replaced when a point crashes it or
  runs past the timeout; the sweep's own process never runs plugin code;
* "process" (`--isolate`): a fresh measuring process per group;
* "none": in this process (no timeout for a hung call; for debugging and the Python API).
"""

from __future__ import annotations

import os
import statistics
import sys

from ..env import environment
from ..errors import EffattnError
from ..spec import Variant
from ..store import DONE_STATUSES, ResultsFile, point_key, read_results
from .point import SweepSpec, base_row
from .worker import MeasuringProcess

STOPPING = ("oom", "timeout")
ISOLATION = ("worker", "process", "none")


def read_rows(path: str) -> list[dict]:
    """Rows of a results file (lines that are no results row are left out)."""
    return read_results(path)[0]


def group_job(
    spec: SweepSpec,
    variants: list[Variant],
    n: int,
    isolation: str = "process",
    worker: MeasuringProcess | None = None,
    baseline_gflops: float | None = None,
) -> list[dict]:
    """One group - these variants at length n, timed interleaved - measured as `isolation` says;
    one row per variant. A variant that crashes or hangs the measuring process is recorded as such
    and the others are measured again without it. Runs wherever the executor puts it: here, or on
    a Ray worker (which always asks for a fresh process)."""
    if isolation == "none":
        from .rounds import measure_group

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


class MachineBusy(EffattnError):
    """`require_quiet`: the machine did not become quiet, or a group stayed loaded (exit 3)."""

    exit_code = 3


def quiet_group_job(spec, variants, n, isolation, worker, baseline_gflops, wait_s: float, log=None) -> list[dict]:
    """`group_job` on a quiet machine only (`require_quiet`): wait for quiet before the group,
    measure it again while its points come back loaded, and give up with MachineBusy after
    load.QUIET_TRIES tries (nothing of a loaded try is kept)."""
    import torch

    from . import load

    threads = torch.get_num_threads()
    why = None
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


def run_worker(spec: SweepSpec, variant: Variant, n: int, label: str = "the isolated process") -> dict:
    """Measure one point in a fresh process (crash, hang and OOM kill cost only this point)."""
    return group_job(spec, [variant], n, "process", MeasuringProcess(label))[0]


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


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def open_results(
    out, *, resume: bool = False, overwrite: bool = False, executor: str = "local", run_id: str | None = None, log=_log
) -> ResultsFile:
    """The results file for a sweep: `out` as given (already open) or a path, opened and locked
    as `resume`/`overwrite` say; what was repaired or skipped on opening is logged."""
    if isinstance(out, ResultsFile):
        rf = out
    else:
        if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
            raise ValueError(f"out must be a path or an open ResultsFile, got {out!r}")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        rf = ResultsFile(str(out), "resume" if resume else "overwrite" if overwrite else "new", executor=executor)
        if run_id:
            rf.run_id = run_id
    rf.open()
    if log:
        from ..store import describe_problems

        for note in rf.notes:
            log(note)
        if rf.problems:
            log(describe_problems(rf.path, rf.problems))
    return rf


def _same_limits(row: dict, spec: SweepSpec) -> bool:
    """Whether an oom or timeout row was recorded under the limits this spec sets."""
    if row.get("status") == "oom":
        return row.get("memory_budget_bytes") == spec.memory_budget_bytes
    if row.get("status") == "timeout":
        return row.get("timeout_s") == spec.timeout_s
    return True


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
    log=_log,
    worker: MeasuringProcess | None = None,
    require_quiet: bool = False,
    quiet_wait_s: float = 120.0,
) -> list[dict]:
    """Measure every point not yet done in `out` (a path or an open `ResultsFile`); return this
    run's rows.

    `executor` is where groups run (default: here, one at a time). A chain of groups goes length
    by length, shortest first, so that an `oom` or `timeout` at n marks the variant's longer
    lengths `skipped` without running them, on any executor. Locally there is one chain holding
    every variant (each group: all variants of a length, interleaved); on a concurrent executor
    each variant is its own chain, and chains run side by side. Every row is written and fsynced
    as it arrives, then passed to `on_row`. `progress`: True for a line per point on stderr
    (`LineProgress`), False for none, or a reporter of one's own (see `LineProgress`).
    `require_quiet`: measure on a quiet machine only, waiting up to `quiet_wait_s` for it before
    each group (`quiet_group_job`; local executor only).
    Resuming a file measured on another machine or thread count raises EffattnError."""
    from .executors import Job, LocalExecutor

    executor = executor or LocalExecutor()
    if isolate:
        isolation = "process"
    if getattr(executor, "isolates", False):  # e.g. Ray: every group in a fresh process
        isolation = "process"
    if isolation not in ISOLATION:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATION)}, got {isolation!r}")
    concurrent = getattr(executor, "concurrent", False)
    if require_quiet and concurrent:
        raise EffattnError("require_quiet judges this machine's load: it needs the local executor")
    rf = open_results(out, resume=resume, overwrite=overwrite, executor=executor.name, run_id=run_id, log=log)
    if not concurrent:
        mismatch = machine_mismatch(rf.existing, environment())
        if mismatch:
            rf.close()
            raise EffattnError(f"cannot resume {rf.path}: {mismatch}; measure into another --out")
    rf.executor = executor.name
    bar = None
    try:
        latest = {point_key(r): r for r in rf.existing}  # the newest row of each point
        if isolation != "worker" and worker is not None:
            worker.kill()
        worker = (worker or MeasuringProcess()) if isolation == "worker" else None
        stopped: dict[str, tuple[str, int]] = {}  # label -> (status, n) that ends its chain
        # the quiet reference rates of this run's groups: their median is the bar for the next
        # groups' load detection (a median, so one group measured in a burst cannot raise it)
        # (locally only: Ray's groups run on nodes of different speeds)
        bars: list[float] = []
        seen_groups: set = set()

        # What each length still needs: variants not done; a done oom/timeout stops the chain
        # (for longer lengths only). An oom or timeout recorded under another memory budget or
        # timeout says nothing about this run's limits: such a point is measured again.
        need: dict[int, list[Variant]] = {}
        remeasured = 0
        for v in spec.variants:
            for n in spec.seq_lens:
                prev = latest.get(point_key(base_row(spec, v, n)))
                status = prev.get("status") if prev else None
                if status in STOPPING and not _same_limits(prev, spec):
                    status, remeasured = None, remeasured + 1
                if status in DONE_STATUSES:
                    if status in STOPPING and v.label not in stopped:
                        stopped[v.label] = (status, n)
                elif not (status == "skipped" and v.label in stopped and stopped[v.label][1] < n):
                    need.setdefault(n, []).append(v)
        if remeasured and log:
            log(
                f"{rf.path}: {remeasured} point(s) ended oom or timeout under another --memory-budget or "
                "--timeout; measuring them again under this run's"
            )
        chains = [list(spec.variants)] if not concurrent else [[v] for v in spec.variants]
        position = {i: 0 for i in range(len(chains))}  # index into spec.seq_lens
        total = sum(len(vs) for vs in need.values())
        bar = LineProgress() if progress is True else progress or None
        if bar:
            bar.begin(total)
        rows = []

        def finish(row):
            row["isolation"] = isolation
            row["isolated"] = isolation == "process"
            if not isinstance(row.get("env"), dict):
                row["env"] = environment()  # a point that never reached its process: this machine's
            if not concurrent:
                if row.get("probe_best_gflops") and row.get("group_id") not in seen_groups:
                    seen_groups.add(row.get("group_id"))
                    bars.append(row["probe_best_gflops"])
            row = rf.append(row)
            rows.append(row)
            if bar:
                bar.finish(row)
            if on_row:
                on_row(row)

        def advance(i):
            """Submit chain i's next group; record points after a stop as skipped."""
            chain = chains[i]
            while position[i] < len(spec.seq_lens):
                n = spec.seq_lens[position[i]]
                position[i] += 1
                members = [v for v in need.get(n, []) if v in chain]
                group = []
                for v in members:
                    if v.label in stopped and stopped[v.label][1] < n:
                        st, at = stopped[v.label]
                        finish({**base_row(spec, v, n), "status": "skipped", "reason": f"{st} at n={at}"})
                    else:
                        group.append(v)
                if group:
                    baseline = statistics.median(bars) if bars else None
                    executor.submit(
                        Job(
                            position[i],
                            quiet_group_job if require_quiet else group_job,
                            (spec, group, n, isolation, worker, baseline)
                            + ((quiet_wait_s, log) if require_quiet else ()),
                            base_row(spec, group[0], n),
                            (i, n, group),
                        )
                    )
                    if bar and concurrent:  # (a local executor says when each job starts, below)
                        bar.start(", ".join(v.label for v in group), n, running=executor.pending())
                    return

        if bar and not concurrent:
            executor.on_start = lambda job: bar.start(f"{len(job.info[2])} variant(s)", job.info[1])
        executor.open(spec.device)
        try:
            for i in range(len(chains)):
                advance(i)
            while executor.pending():
                job, got = executor.next_done()
                i, n, group = job.info
                if isinstance(got, dict):  # an executor's own failure row for the whole job
                    got = [
                        {**base_row(spec, v, n), **{k: got[k] for k in ("status", "reason") if k in got}} for v in group
                    ]
                for row in got:
                    if row.get("status") in STOPPING and (row["label"] not in stopped or n < stopped[row["label"]][1]):
                        stopped[row["label"]] = (row["status"], n)
                    finish(row)
                advance(i)
        except BaseException:
            executor.cancel()  # finished rows are on disk already; running points are abandoned
            if worker is not None:
                worker.kill()
            raise
        try:
            executor.close()
            if worker is not None:
                worker.close()
        except KeyboardInterrupt as e:  # Ctrl-C while shutting down: every point is in the file
            if worker is not None:
                worker.kill()
            e.sweep_complete = True
            raise
        return rows
    finally:
        if bar:
            bar.close()  # (also on Ctrl-C: a bar's line is ended before the message that follows)
        rf.close()
