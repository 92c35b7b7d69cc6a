"""A sweep: every (variant, length) point measured, appended to JSON lines and flushed at once.

Nothing measured is lost: each row is written the moment it exists; Ctrl-C keeps every finished
row; `resume` skips rows already in the file. After an `oom` or `timeout` at length n, the
variant's longer lengths are recorded as `skipped` without being attempted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import asdict

from ..env import environment
from ..spec import Variant
from .point import SweepSpec, base_row, measure_point, point_key

STOPPING = ("oom", "timeout")


def _jsonable(row: dict) -> dict:
    return json.loads(json.dumps(row, default=str))


def append_row(f, row: dict) -> dict:
    """Append one row to an open results file and make it durable before going on; returns the
    row as written (plain JSON)."""
    row = _jsonable(row)
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())
    return row


def stamp(row: dict, run_id: str, executor_name: str, argv: str) -> dict:
    """What a sweep adds to a row when it comes back: the run, the executor, when, and the
    command the user ran (the measuring process's own argv means nothing on a Ray worker)."""
    row.update(run_id=run_id, executor=executor_name, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if isinstance(row.get("env"), dict):
        row["env"]["argv"] = argv
    return row


def read_rows(path: str) -> list[dict]:
    """Rows of a results file; a torn last line (killed mid-write) is ignored."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def run_worker(spec: SweepSpec, variant: Variant, n: int, label: str = "isolated point", **spec_overrides) -> dict:
    """Measure one point in a fresh process (`python -m effattn.bench.worker`): a crash, a hang or
    an OOM kill costs only this point, and comes back as a row with its status."""
    spec_dict = {**asdict(spec), "variants": [], "seq_lens": [], **spec_overrides}
    payload = json.dumps({"spec": spec_dict, "variant": {"name": variant.name, "options": variant.options}, "n": n,
                          "parent": os.getpid()})
    base = base_row(SweepSpec(**spec_dict), variant, n)
    try:
        p = subprocess.run([sys.executable, "-m", "effattn.bench.worker"], input=payload, capture_output=True,
                           text=True, timeout=spec.timeout_s + 60)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "reason": f"{label} exceeded {spec.timeout_s:g} s (+60 s start-up) and was killed"}
    if p.returncode == 0 and p.stdout.strip():
        return json.loads(p.stdout.strip().splitlines()[-1])
    if p.returncode in (-9, 137):
        return {**base, "status": "oom", "reason": f"{label} was killed (SIGKILL: out of memory)"}
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    status = "oom" if "memory" in tail.lower() else "error"
    return {**base, "status": status, "reason": f"{label} exited {p.returncode}: {tail}"}


class Progress:
    """A one-line progress bar with ETA on a terminal; plain lines otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream, self.t0 = total, 0, stream, time.time()
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def start(self, label: str, n: int, running: int = 1):
        if self.tty:
            el = time.time() - self.t0
            eta = el / self.done * (self.total - self.done) if self.done else 0
            bar = "#" * int(20 * self.done / max(1, self.total))
            now = f"{label} n={n}" if running <= 1 else f"{running} in flight, latest {label} n={n}"
            self.stream.write(f"\r[{bar:<20}] {self.done}/{self.total} {now}  ETA {eta:5.0f}s   ")
            self.stream.flush()

    def finish(self, row: dict):
        self.done += 1
        if not self.tty:
            t = f"{row['time_ms']:.2f} ms" if row.get("time_ms") is not None else ""
            self.stream.write(f"[{self.done}/{self.total}] {row['label']} n={row['seq_len']}: {row['status']} {t}"
                              + (f" ({row['reason']})" if row.get("reason") and row["status"] != "ok" else "") + "\n")
            self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")


def point_job(spec: SweepSpec, variant: Variant, n: int, isolate: bool) -> dict:
    """One point, with the environment of the process that measured it and that machine's matmul
    peak. Runs wherever the executor puts it: here, or on a Ray worker."""
    from .measure import matmul_peak_gflops

    row = run_worker(spec, variant, n) if isolate else measure_point(spec, variant, n)
    row["env"] = environment()
    try:
        row["matmul_peak_gflops"] = matmul_peak_gflops(spec.device)
    except Exception as e:  # noqa: BLE001 - e.g. a node without the device; the point says why
        row["matmul_peak_gflops"] = None
        if row.get("status") == "ok":
            row.update(status="error", reason=f"cannot measure the matmul peak on {spec.device}: {e}")
    return row


def run_sweep(spec: SweepSpec, out_path: str, *, resume: bool = False, isolate: bool = False,
              progress: bool = True, run_id: str | None = None, executor=None, on_row=None) -> list[dict]:
    """Measure every point not yet in `out_path` (when resuming); return this run's rows.

    `executor` is where points run (default: here, one at a time). Each variant's lengths run in
    increasing order, one after another, so that an `oom` or `timeout` at n marks the longer lengths
    `skipped` without running them, on any executor; different variants run side by side when the
    executor can. Every row is written and fsynced as it arrives, then passed to `on_row`."""
    from .executors import Job, LocalExecutor

    executor = executor or LocalExecutor()
    isolate = isolate or getattr(executor, "isolates", False)  # e.g. Ray: every point in a fresh process
    done = {point_key(r): r for r in read_rows(out_path)} if resume else {}
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    argv = " ".join(sys.argv)

    # Each variant's chain: the lengths still to run, and the failure (if any) that ends it.
    chains, stopped_at, order = {}, {}, 0
    for v in spec.variants:
        chains[v.label] = []
        for n in spec.seq_lens:
            prev = done.get(point_key({"label": v.label, "seq_len": n, **spec.point_config()}))
            if prev is None:
                chains[v.label].append(Job(order, point_job, (spec, v, n, isolate), base_row(spec, v, n), (v, n)))
            elif prev.get("status") in STOPPING and v.label not in stopped_at:
                stopped_at[v.label] = (prev["status"], n)
            order += 1
    total = sum(len(c) for c in chains.values())
    bar = Progress(total) if progress else None
    rows = []

    with open(out_path, "a" if resume else "w") as f:
        def finish(row):
            stamp(row, run_id, executor.name, argv)["isolated"] = isolate
            if row.get("gflops") and row.get("matmul_peak_gflops"):
                row["peak_fraction"] = row["gflops"] / row["matmul_peak_gflops"]
            row = append_row(f, row)
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
                    finish({**job.base_row, "status": "skipped", "reason": f"{st} at n={at}", "env": environment()})
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
            raise
        finally:
            executor.close()
    if bar:
        bar.close()
    return rows
