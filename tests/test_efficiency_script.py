"""benchmarks/efficiency.py: its table from results rows, and its bad inputs (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "efficiency.py"


def _row(variant, n, mode, frac, options=None, basis="pairs", time_ms=10.0, exact=True):
    label = variant + "".join(f":{k}={v}" for k, v in sorted((options or {}).items()))  # as effattn writes it
    return {"label": label, "variant": variant, "options": options or {}, "seq_len": n, "mode": mode, "status": "ok",
            "peak_fraction": frac, "matmul_peak_gflops": 180.0, "time_ms": time_ms, "flops_basis": basis,
            "exact": exact}  # fmt: skip


def _write(d: Path, fwd=(), fwdbwd=(), short=()):
    d.mkdir(parents=True, exist_ok=True)
    for name, rows in (("fwd", fwd), ("fwdbwd", fwdbwd), ("short", short)):
        lines = [json.dumps({"kind": "header"})] + [json.dumps(r) for r in rows] + ["{torn"]
        (d / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_table_side_by_side_with_targets_and_short_ratio(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    lin_before = _row("linear", 4096, "fwd", None, basis=None, exact=False)
    lin_after = _row("linear", 4096, "fwd", 0.2, basis="algorithm", exact=False)
    _write(before, fwd=[_row("sparse", 4096, "fwd", 0.07), lin_before],
           short=[_row("full", 128, "fwdbwd", 0.5, time_ms=10.0),
                  _row("sliding_window", 128, "fwdbwd", 0.3, {"window": 64}, time_ms=18.0)])  # fmt: skip
    _write(after, fwd=[_row("sparse", 4096, "fwd", 0.41), lin_after],
           short=[_row("full", 128, "fwdbwd", 0.5, time_ms=10.0),
                  _row("sliding_window", 128, "fwdbwd", 0.4, {"window": 64}, time_ms=11.0)])  # fmt: skip
    r = _run("table", str(after), "--before", str(before))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "| `sparse` | pairs | 7% → 41% | fwd ≥ 40%, fwdbwd ≥ 40% |" in out
    assert "| `linear` | algorithm | n/a → 20% | - |" in out  # before: no FLOP rate for approximate rows
    assert "| 128 | 1.80× | 1.10× |" in out


def test_bad_inputs_are_one_line_errors(tmp_path):
    r = _run("table", str(tmp_path / "missing"))
    assert r.returncode != 0 and "is not a directory" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = _run("table", str(tmp_path / "empty"))
    assert r.returncode != 0 and "holds no measured rows" in r.stderr and "Traceback" not in r.stderr
    r = _run("run", "--only", "fwd,nonsense", "--out-dir", str(tmp_path / "x"))
    assert r.returncode != 0 and "--only takes" in r.stderr
    r = _run("run", "--repo", str(tmp_path), "--out-dir", str(tmp_path / "x"))
    assert r.returncode != 0 and "not an effattn checkout" in r.stderr
