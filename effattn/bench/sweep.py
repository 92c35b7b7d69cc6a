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
from .point import SweepSpec, measure_point, point_key

STOPPING = ("oom", "timeout")


def _jsonable(row: dict) -> dict:
    return json.loads(json.dumps(row, default=str))


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
    payload = json.dumps({"spec": spec_dict, "variant": {"name": variant.name, "options": variant.options}, "n": n})
    base = {"variant": variant.name, "options": variant.options, "label": variant.label, "seq_len": n,
            **SweepSpec(**{**spec_dict, "seq_lens": [], "variants": []}).point_config()}
    base.pop("min_run_time_s", None)
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

    def start(self, label: str, n: int):
        if self.tty:
            el = time.time() - self.t0
            eta = el / self.done * (self.total - self.done) if self.done else 0
            bar = "#" * int(20 * self.done / max(1, self.total))
            self.stream.write(f"\r[{bar:<20}] {self.done}/{self.total} {label} n={n}  ETA {eta:5.0f}s   ")
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


def run_sweep(spec: SweepSpec, out_path: str, *, resume: bool = False, isolate: bool = False,
              progress: bool = True, run_id: str | None = None) -> list[dict]:
    """Measure every point not yet in `out_path` (when resuming); return this run's rows."""
    done = {point_key(r): r for r in read_rows(out_path)} if resume else {}
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    env = environment()
    from .measure import matmul_peak_gflops

    peak = matmul_peak_gflops(spec.device)
    todo = [(v, n) for v in spec.variants for n in spec.seq_lens]
    bar = Progress(len(todo)) if progress else None
    rows, stopped = [], {}
    mode = "a" if resume else "w"
    with open(out_path, mode) as f:
        for v, n in todo:
            key_row = {"label": v.label, "seq_len": n, **spec.point_config()}
            if point_key(key_row) in done:
                prev = done[point_key(key_row)]
                if prev.get("status") in STOPPING:
                    stopped[v.label] = (prev["status"], n)
                if bar:
                    bar.done += 1
                continue
            if v.label in stopped:
                st, at = stopped[v.label]
                row = {"variant": v.name, "options": v.options, "label": v.label, "seq_len": n,
                       **spec.point_config(), "status": "skipped", "reason": f"{st} at n={at}"}
                row.pop("min_run_time_s", None)
            else:
                if bar:
                    bar.start(v.label, n)
                row = run_worker(spec, v, n) if isolate else measure_point(spec, v, n)
                if row["status"] in STOPPING:
                    stopped[v.label] = (row["status"], n)
            row.update(run_id=run_id, matmul_peak_gflops=peak, env=env, isolated=isolate,
                       measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            if row.get("gflops"):
                row["peak_fraction"] = row["gflops"] / peak
            row = _jsonable(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            rows.append(row)
            if bar:
                bar.finish(row)
    if bar:
        bar.close()
    return rows
