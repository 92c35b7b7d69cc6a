"""benchmarks/references.py (issue #15): a --quick run at tiny lengths writes every row with finite
numbers and ours within float tolerance of each reference; `table` prints them; bad inputs are one
line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "references.py"
CASES = ["gla", "deltanet", "gated_deltanet", "nsa", "nsa:fla", "moba", "sliding_window_sinks"]
FLOAT64_REFS = {"nsa", "moba", "sliding_window_sinks"}
LENGTHS = (48, 80)

#: ours (float32) against a reference, relative Frobenius error. Both sides round in float32 (unit
#: roundoff 6e-8): fla's loops compute in float32 whatever they are given, the dense references
#: compute in float64 from the float32 inputs. Measured at n <= 256: 1.4e-7 to 4.1e-7. 1e-5 leaves a
#: 25x margin and still fails on any real disagreement (a wrong gate, scale, mask or a different
#: kept block moves the output by 1e-2 or more).
TOL_F32 = 1e-5
#: the same, max abs error over the reference's largest entry: tests/test_gated_linear.py's FLA_TOL
TOL_F32_MAX = 2e-5
#: ours in float64 against a float64 reference: the same arithmetic in another order (measured
#: 2e-16 to 3e-16); tests/test_nsa.py and test_moba.py hold the same pairs to 1e-12
TOL_F64 = 1e-12


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("references") / "rows.jsonl"
    lengths = ",".join(map(str, LENGTHS))
    p = _run("run", "--quick", "--lengths", lengths, "--min-run-time", "0.01", "--out", str(out))
    assert p.returncode == 0, p.stderr
    return out, [json.loads(line) for line in out.read_text().splitlines()]


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def _fla_skip(x):
    return isinstance(x, str) and x.startswith("skipped: fla-core")


def test_quick_run_writes_every_row_with_finite_numbers(quick_rows):
    _, rows = quick_rows
    got = {(r["case"], r["n"], r["measure"]): r for r in rows}
    for case in CASES:
        for n in LENGTHS:
            want = ["fwd", "fwdbwd", "memory", "error_float32"] + (["error_float64"] if case in FLOAT64_REFS else [])
            assert {m for c, nn, m in got if (c, nn) == (case, n)} == set(want), (case, n)
            for m in ("fwd", "fwdbwd", "memory"):
                r = got[(case, n, m)]
                assert r["env"]["torch"] and r["env"]["threads"] >= 1
                assert _finite(r["ours"]) and _finite(r["full"]) and r["ours"] > 0, (case, n, m, r)
                if _fla_skip(r["reference"]):
                    continue
                assert _finite(r["reference"]) and _finite(r["ours_over_reference"]), (case, n, m, r)
                if m != "memory":
                    assert _finite(r["ours_over_full"]) and _finite(r["reference_over_full"])
                    assert math.isclose(r["ours_over_reference"], r["ours"] / r["reference"])


def test_ours_agrees_with_each_reference_within_float_tolerance(quick_rows):
    _, rows = quick_rows
    checked = 0
    for r in rows:
        if not r["measure"].startswith("error"):
            continue
        e = r["ours_vs_reference"]
        full = r["ours_vs_full"]
        assert _finite(full["max_abs"]) and _finite(full["rel_fro"])
        if _fla_skip(e):
            continue
        assert all(_finite(x) for x in e.values()), r
        if r["measure"] == "error_float32":
            assert e["rel_fro"] < TOL_F32 and e["max_abs"] / e["ref_max_abs"] < TOL_F32_MAX, (r["case"], r["n"], e)
        else:
            assert e["rel_fro"] < TOL_F64 and e["max_abs"] / e["ref_max_abs"] < TOL_F64, (r["case"], r["n"], e)
        checked += 1
    assert checked >= 2 * len(FLOAT64_REFS) * 2  # the float64 references always run: f32 and f64 rows


def test_table_prints_every_case(quick_rows):
    out, _ = quick_rows
    p = _run("table", str(out))
    assert p.returncode == 0, p.stderr
    for case in CASES:
        for n in LENGTHS:
            assert f"| `{case}` | {n} |" in p.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--lengths", "0"], "positive"),
        (["run", "--lengths", "1024,abc"], "--lengths"),
        (["run", "--lengths", "-5"], "positive"),
        (["run", "--variants", "nsa,bogus"], "unknown variant bogus"),
        (["run", "--min-run-time", "0"], "--min-run-time"),
        (["run", "--max-ref-seconds", "0"], "--max-ref-seconds"),
        (["run", "--lengths", ""], "--lengths is empty"),  # these three used to start the full run
        (["run", "--variants", " , "], "--variants is empty"),
        (["run", "--min-run-time", "-1"], "--min-run-time"),
        (["run", "--min-run-time", "inf"], "--min-run-time"),  # would time forever
        (["run", "--max-ref-seconds", "inf"], "--max-ref-seconds"),
        (["table", "/nonexistent/rows.jsonl"], "is not a file"),
    ],
)
def test_bad_inputs_are_one_line_and_a_nonzero_exit(tmp_path, args, needle):
    p = _run(*args, "--out", str(tmp_path / "x.jsonl")) if args[0] == "run" else _run(*args)
    assert p.returncode != 0
    err = p.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "x.jsonl").exists() or not (tmp_path / "x.jsonl").read_text()


def test_rows_load_with_effattns_reader_and_stay_out_of_reports(quick_rows, tmp_path):
    """The rows are results rows of their own kind: effattn.results.load reads them, and report
    and compare refuse a file of them in one line, naming the script that reads them."""
    from effattn.results import load

    out, rows = quick_rows
    df = load(str(out))
    assert len(df) == len(rows) and set(df["kind"]) == {"reference"} and set(df["status"]) == {"ok"}
    for cmd in (["report", str(out), "--out", str(tmp_path / "r")], ["compare", str(out), str(out)]):
        p = subprocess.run([sys.executable, "-m", "effattn.cli", *cmd], capture_output=True, text=True)
        assert p.returncode == 2 and "benchmarks/references.py" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_file_without_rows_is_refused(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("not json\n{}\n")
    p = _run("table", str(f))
    assert p.returncode != 0 and "holds no references rows" in p.stderr and "Traceback" not in p.stderr
