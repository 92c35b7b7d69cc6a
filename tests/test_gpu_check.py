"""The GPU check script must skip cleanly where there is no CUDA (CI, this CPU machine)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the script would run for real")
def test_gpu_check_skips_without_cuda(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["skipped"].startswith("no CUDA") and out["checks"] == []


@pytest.mark.parametrize("budget", ["abc", "-5", "nan", "inf"])
def test_a_bad_budget_is_one_line_and_a_non_zero_exit(tmp_path, budget):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path), budget],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "BUDGET_S must be a number of seconds > 0" in r.stderr
    assert "Traceback" not in r.stderr
