"""A sweep: every (variant, length) point measured, appended to JSON lines and fsynced at once.

Nothing measured is lost: each row is written the moment it exists (through `ResultsFile`, which
locks the file for the run); Ctrl-C keeps every finished row; `resume` skips the points already
done (see `effattn.store.DONE_STATUSES`). After an `oom` or `timeout` at length n, the variant's
longer lengths are recorded as `skipped` without being attempted.

Where points run (`isolation`):

* "worker" (default): in one long-lived measuring process, replaced when a point crashes it or
  runs past the timeout; the sweep's own process never runs plugin code;
* "process" (`--isolate`): a fresh measuring process per point;
* "none": in this process (no timeout for a hung call; for debugging and the Python API).
"""
from __future__ import annotations

import sys

from ..env import environment
from ..spec import Variant
from ..store import DONE_STATUSES, ResultsFile, point_key, read_results
from .point import SweepSpec, base_row, measure_point_in_context
from .worker import MeasuringProcess

STOPPING = ("oom", "timeout")
ISOLATION = ("worker", "process", "none")


def read_rows(path: str) -> list[dict]:
    """Rows of a results file (lines that are no results row are left out)."""
    return read_results(path)[0]


def point_job(spec: SweepSpec, variant: Variant, n: int, isolation: str = "process",
              worker: MeasuringProcess | None = None) -> dict:
    """One point, measured as `isolation` says. Runs wherever the executor puts it: here, or on
    a Ray worker (which always asks for a fresh process)."""
    if isolation == "none":
        return measure_point_in_context(spec, variant, n)
    job = {"spec": spec.point_config(), "variant": {"name": variant.name, "options": variant.options}, "n": n}
    base = base_row(spec, variant, n)
    if worker is not None:
        return worker.run(job, spec.timeout_s, base)
    with MeasuringProcess("the isolated process") as mp:
        return mp.run(job, spec.timeout_s, base)


def run_worker(spec: SweepSpec, variant: Variant, n: int, label: str = "the isolated process") -> dict:
    """Measure one point in a fresh process (crash, hang and OOM kill cost only this point)."""
    with MeasuringProcess(label) as mp:
        return mp.run({"spec": spec.point_config(), "variant": {"name": variant.name, "options": variant.options},
                       "n": n}, spec.timeout_s, base_row(spec, variant, n))


class Progress:
    """A one-line progress bar with ETA on a terminal; plain lines otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        import time

        self._time = time.time
        self.total, self.done, self.stream, self.t0 = total, 0, stream, time.time()
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def start(self, label: str, n: int, running: int = 1):
        if self.tty:
            el = self._time() - self.t0
            eta = el / self.done * (self.total - self.done) if self.done else 0
            bar = "#" * int(20 * self.done / max(1, self.total))
            now = f"{label} n={n}" if running <= 1 else f"{running} in flight, latest {label} n={n}"
            self.stream.write(f"\r[{bar:<20}] {self.done}/{self.total} {now}  ETA {eta:5.0f}s   ")
            self.stream.flush()

    def finish(self, row: dict):
        self.done += 1
        if not self.tty:
            t = f"{row['time_ms']:.2f} ms" if row.get("time_ms") is not None else ""
            flag = f" FAULT: {row['fault']}" if row.get("fault") else ""
            self.stream.write(f"[{self.done}/{self.total}] {row['label']} n={row['seq_len']}: {row['status']} {t}"
                              + (f" ({row['reason']})" if row.get("reason") and row["status"] != "ok" else "")
                              + flag + "\n")
            self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def open_results(out, *, resume: bool = False, overwrite: bool = False, executor: str = "local",
                 run_id: str | None = None, log=_log) -> ResultsFile:
    """The results file for a sweep: `out` as given (already open) or a path, opened and locked
    as `resume`/`overwrite` say; what was repaired or skipped on opening is logged."""
    if isinstance(out, ResultsFile):
        rf = out
    else:
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


def run_sweep(spec: SweepSpec, out, *, resume: bool = False, overwrite: bool = False, isolate: bool = False,
              isolation: str = "worker", progress: bool = True, run_id: str | None = None, executor=None,
              on_row=None, log=_log) -> list[dict]:
    """Measure every point not yet done in `out` (a path or an open `ResultsFile`); return this
    run's rows.

    `executor` is where points run (default: here, one at a time). Each variant's lengths run in
    increasing order, one after another, so that an `oom` or `timeout` at n marks the longer lengths
    `skipped` without running them, on any executor; different variants run side by side when the
    executor can. Every row is written and fsynced as it arrives, then passed to `on_row`."""
    from .executors import Job, LocalExecutor

    executor = executor or LocalExecutor()
    if isolate:
        isolation = "process"
    if getattr(executor, "isolates", False):  # e.g. Ray: every point in a fresh process
        isolation = "process"
    if isolation not in ISOLATION:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATION)}, got {isolation!r}")
    rf = open_results(out, resume=resume, overwrite=overwrite, executor=executor.name, run_id=run_id, log=log)
    rf.executor = executor.name
    try:
        latest = {point_key(r): r for r in rf.existing}  # the newest row of each point
        worker = MeasuringProcess() if isolation == "worker" else None

        # Each variant's chain: the lengths still to run, and the failure (if any) that ends it.
        chains, stopped_at, order = {}, {}, 0
        for v in spec.variants:
            chains[v.label] = []
            for n in spec.seq_lens:
                prev = latest.get(point_key(base_row(spec, v, n)))
                status = prev.get("status") if prev else None
                if status in DONE_STATUSES:
                    if status in STOPPING and v.label not in stopped_at:
                        stopped_at[v.label] = (status, n)
                elif status == "skipped" and v.label in stopped_at:
                    pass  # still skipped, for the same shorter failure: nothing to add
                else:
                    chains[v.label].append(Job(order, point_job, (spec, v, n, isolation, worker),
                                               base_row(spec, v, n), (v, n)))
                order += 1
        total = sum(len(c) for c in chains.values())
        bar = Progress(total) if progress else None
        rows = []

        def finish(row):
            row["isolation"] = isolation
            row["isolated"] = isolation == "process"
            if not isinstance(row.get("env"), dict):
                row["env"] = environment()  # a point that never reached its process: this machine's
            row = rf.append(row)
            rows.append(row)
            if bar:
                bar.finish(row)
            if on_row:
                on_row(row)

        def advance(label):
            """Submit the variant's next length, or record the rest as skipped after a failure."""
            chain = chains[label]
            if label in stopped_at:
                st, at = stopped_at[label]
                while chain:
                    job = chain.pop(0)
                    finish({**job.base_row, "status": "skipped", "reason": f"{st} at n={at}"})
            elif chain:
                job = chain.pop(0)
                executor.submit(job)
                if bar and concurrent:  # (a local executor says when each job starts, below)
                    bar.start(label, job.info[1], running=executor.pending())

        concurrent = getattr(executor, "concurrent", False)
        if bar and not concurrent:
            executor.on_start = lambda job: bar.start(job.info[0].label, job.info[1])
        executor.open(spec.device)
        try:
            for label in chains:
                advance(label)
            while executor.pending():
                job, row = executor.next_done()
                v, n = job.info
                if row.get("status") in STOPPING:
                    stopped_at[v.label] = (row["status"], n)
                finish(row)
                advance(v.label)
        except BaseException:
            executor.cancel()  # finished rows are on disk already; running points are abandoned
            if worker is not None:
                worker.kill()
            raise
        finally:
            executor.close()
            if worker is not None:
                worker.close()
        if bar:
            bar.close()
        return rows
    finally:
        rf.close()
