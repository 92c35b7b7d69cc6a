"""One runner for every kind of sweep - the timing sweep, the task sweep, `--find-max-len`.

A sweep is a set of chains (`Chain`): each hands out its jobs one at a time, the next one decided
by what the last one measured (a variant's longer length is skipped after an oom; a probe for the
longest length doubles or bisects). The runner submits each chain's next job to the executor,
writes every row the moment it arrives (`ResultsFile.append`: fsynced), reports progress, and
owns the measuring process the jobs run in (`Isolation`). What a results file already holds is
read once (`Resumed`): a chain skips what is done. On Ctrl-C, SIGTERM or a lost executor every
finished row is in the file; running jobs are abandoned.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..env import environment
from ..store import DONE_STATUSES, ResultsFile, describe_problems, point_key
from .executors import Job, LocalExecutor
from .worker import MeasuringProcess

#: where a sweep's jobs run: in one long-lived measuring process ("worker"), in a fresh one each
#: ("process", --isolate; always on an executor that isolates, such as Ray), or here ("none")
ISOLATION = ("worker", "process", "none")


def isolation_for(isolation: str = "worker", isolate: bool = False, executor=None) -> str:
    """Where jobs run, decided once: --isolate and an isolating executor both mean "process"."""
    if isolate or getattr(executor, "isolates", False):
        return "process"
    if isolation not in ISOLATION:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATION)}, got {isolation!r}")
    return isolation


def log_line(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def open_results(
    out, *, resume=False, overwrite=False, executor="local", run_id=None, tags=None, log=log_line
) -> ResultsFile:
    """The results file: `out` as given (already open) or a path, opened and locked as `resume` /
    `overwrite` say; what was repaired or skipped on opening is logged."""
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
        if tags is not None:
            rf.tags = tags
    rf.open()
    rf.executor = executor
    if log:
        for note in rf.notes:
            log(note)
        if rf.problems:
            log(describe_problems(rf.path, rf.problems))
    return rf


class Resumed:
    """What a results file holds, as --resume reads it: the newest row of each point."""

    def __init__(self, rows: list[dict]):
        self.latest = {point_key(r): r for r in rows}

    def row(self, identity: dict) -> dict | None:
        return self.latest.get(point_key(identity))

    def done(self, identity: dict, still_holds: Callable[[dict], bool] = lambda row: True) -> dict | None:
        """The row that makes this point done (its status is one of DONE_STATUSES and it still
        holds under this run's limits), or None: the point is to be measured."""
        row = self.row(identity)
        if row is None or row.get("status") not in DONE_STATUSES or not still_holds(row):
            return None
        return row


@dataclass
class Step:
    """A chain's next move: rows to write now (points it skips), and the job to run, if any."""

    rows: list
    job: Job | None = None


class Chain:
    """A sequence of jobs in which each may depend on the ones before. `next()` says what comes
    next; `finished(job, result)` takes a job's result and returns its rows."""

    total: int | None = None  # the jobs' rows it will write, where known (progress)

    def next(self) -> Step:
        raise NotImplementedError

    def finished(self, job: Job, result) -> list[dict]:
        raise NotImplementedError


class Runner:
    """Runs chains on an executor into an open results file. `stamp(row)` completes a row before
    it is written; `progress` is a reporter (`begin(total)`, `start(label, n, running)`,
    `finish(row)`, `close()`) or None; `on_row(row)` sees each row once written."""

    def __init__(self, rf: ResultsFile, executor=None, progress=None, on_row=None, stamp=None, device="cpu"):
        self.rf, self.executor, self.device = rf, executor or LocalExecutor(), device
        self.progress, self.on_row, self.stamp = progress, on_row, stamp
        self.rows: list[dict] = []
        self.worker: MeasuringProcess | None = None

    def write(self, row: dict) -> dict:
        if not isinstance(row.get("env"), dict):
            row["env"] = environment()  # a point that never reached its process: this machine's
        if self.stamp:
            self.stamp(row)
        row = self.rf.append(row)
        self.rows.append(row)
        if self.progress:
            self.progress.finish(row)
        if self.on_row:
            self.on_row(row)
        return row

    def run(self, chains: list[Chain], describe: Callable[[object], tuple[str, int]] | None = None) -> list[dict]:
        """Every chain to its end; the rows written, in the order they were. `describe(info)`
        names a job for progress (a label and a length) from the chain's own bookkeeping."""
        ex = self.executor
        if self.progress:
            self.progress.begin(sum(c.total or 0 for c in chains))
        concurrent = getattr(ex, "concurrent", False)
        if self.progress and describe and not concurrent:
            ex.on_start = lambda job: self.progress.start(*describe(unwrap(job)))
        ex.open(self.device)
        try:
            for i in range(len(chains)):
                self._advance(chains, i, describe if concurrent else None)
            while ex.pending():
                job, result = ex.next_done()
                i = job.info[0]
                for row in chains[i].finished(job, result):
                    self.write(row)
                self._advance(chains, i, describe if concurrent else None)
        except BaseException:
            ex.cancel()  # finished rows are on disk already; running jobs are abandoned
            if self.worker is not None:
                self.worker.kill()
            raise
        try:
            ex.close()
            if self.worker is not None:
                self.worker.close()
        except KeyboardInterrupt as e:  # Ctrl-C while shutting down: every row is in the file
            if self.worker is not None:
                self.worker.kill()
            e.sweep_complete = True
            raise
        return self.rows

    def _advance(self, chains, i: int, describe) -> None:
        step = chains[i].next()
        for row in step.rows:
            self.write(row)
        if step.job is not None:
            step.job.info = (i, step.job.info)
            self.executor.submit(step.job)
            if self.progress and describe:
                label, n = describe(unwrap(step.job))
                self.progress.start(label, n, running=self.executor.pending())

    def close(self) -> None:
        if self.progress:
            self.progress.close()  # (also on Ctrl-C: a bar's line is ended before the message that follows)
        self.rf.close()


def unwrap(job: Job):
    """The chain's own bookkeeping of a job the runner submitted (it wraps it with the chain's index)."""
    return job.info[1]
