"""`effattn advise`: the answer checked against answers computed by hand from the rows - on rows
made here with known figures, and on committed sweeps it was not tuned to - and its bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from effattn.report.advise import AdviseError, Constraints, advise
from effattn.report.decision import decision_grid
from effattn.results import latest, load

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "results" / "scaling-cpu" / "cpu-sweep-256-16k.jsonl"
WITH_ERRORS = ROOT / "results" / "against-peers" / "side-by-side-fwd.jsonl"
TEMPLATE = json.loads(SWEEP.read_text().splitlines()[0])


def row(label, n, time_ms, peak=1 << 20, err=None, status="ok", spread=0.01, **extra):
    """A results row of the committed sweep's configuration with the given figures; its rounds
    are time_ms times (1 - spread, 1, 1 + spread), so its median is time_ms."""
    r = dict(TEMPLATE, label=label, variant=label.split(":")[0], seq_len=n, status=status, reason=None)
    r.update(input_bytes=4 * n * 8 * 64 * 4, peak_mem_bytes=peak, rel_err_vs_full=err, group_id=None)
    if status == "ok":
        raw = [time_ms * (1 - spread), time_ms, time_ms * (1 + spread)] * 3
        r.update(time_ms=time_ms, time_raw_ms=raw, time_ci_ms=[min(raw), max(raw)], time_ci_coverage=0.98)
    else:
        r.update(time_ms=None, time_raw_ms=None, time_ci_ms=None, peak_mem_bytes=None, reason=f"{status} here")
    r.update(extra)
    return r


def frame(rows, tmp_path) -> pd.DataFrame:
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return latest(load(str(p)))


def labels(a):
    return [e.label for e in a.candidates]


# ------------------------------------------------------------------------------- hand-made rows
def test_measured_points_ranked_by_time_with_every_other_reason(tmp_path):
    n = 1024
    rows = [
        row("full", n, 10.0, peak=100 << 20, err=0.0),
        row("linear", n, 2.0, peak=10 << 20, err=0.5),
        row("sliding_window", n, 4.0, peak=20 << 20, err=0.04),
        row("naive", n, 30.0, peak=900 << 20, err=1e-7),
        row("performer", n, 1.0, status="oom"),
    ]
    df = frame(rows, tmp_path)
    inputs = rows[0]["input_bytes"]
    # no constraint: by time
    a = advise(df, Constraints(n))
    assert labels(a) == ["linear", "sliding_window", "full", "naive"]
    assert a.recommended == "linear"
    assert a.excluded == [{"label": "performer", "reason": "oom at n = 1024: oom here"}]
    # error 0.1: linear (0.5) out; budget 50 MiB + inputs: full and naive out
    a = advise(df, Constraints(n, memory_budget_bytes=(50 << 20) + inputs, max_error=0.1))
    assert labels(a) == ["sliding_window"]
    why = {d["label"]: d["reason"] for d in a.excluded}
    assert why["linear"].startswith("over the error tolerance: 0.5 > 0.1")
    assert why["full"].startswith("over the memory budget") and why["naive"].startswith("over the memory budget")
    # the budget counts inputs plus peak: 20 MiB of peak does not fit a budget of exactly 20 MiB
    a = advise(df, Constraints(n, memory_budget_bytes=20 << 20))
    assert labels(a) == ["linear"]
    # full's error is 0 by definition, even where the row has none
    df2 = frame([row("full", n, 10.0, err=None), row("linear", n, 2.0, err=None)], tmp_path)
    a = advise(df2, Constraints(n, max_error=0.0))
    assert labels(a) == ["full"]
    assert "not measured" in a.excluded[0]["reason"]
    # nothing fits
    a = advise(df, Constraints(n, memory_budget_bytes=1))
    assert a.recommended is None and len(a.excluded) == 5


def test_overlapping_intervals_are_reported_as_a_tie(tmp_path):
    df = frame([row("a", 512, 10.0, spread=0.2), row("b", 512, 11.0, spread=0.2), row("c", 512, 20.0)], tmp_path)
    a = advise(df, Constraints(512))
    assert a.recommended == "a" and a.tied == ["b"]


def test_interpolation_is_the_log_log_line_between_the_two_lengths(tmp_path):
    # t = n^2 / 1e5 at 1k and 4k: at 2k the line through both gives exactly (2k)^2 / 1e5
    df = frame([row("q", 1024, 1024**2 / 1e5, peak=1 << 20), row("q", 4096, 4096**2 / 1e5, peak=16 << 20)], tmp_path)
    a = advise(df, Constraints(2048))
    (e,) = a.candidates
    assert e.extrapolated and e.basis == "interpolated between n = 1024 and 4096"
    assert e.time_ms == pytest.approx(2048**2 / 1e5, rel=1e-12)
    assert e.peak_mem_bytes == pytest.approx(4 << 20, rel=1e-12)  # sqrt(1 MiB * 16 MiB)
    lo, hi = e.time_ms_interval
    assert lo < e.time_ms < hi


def test_extrapolation_follows_the_fit_and_its_interval_widens_with_curvature(tmp_path):
    lens = [1024, 2048, 4096]
    straight = [row("quad", m, m**2 / 1e5, peak=m * 1000) for m in lens]
    # the same at 1k and 2k, then flatter: the local exponent moves, so the interval must widen
    bent = [row("bent", m, m**2 / 1e5 if m < 4096 else 2 * 2048**2 / 1e5, peak=m * 1000) for m in lens]
    df = frame(straight + bent, tmp_path)
    a = advise(df, Constraints(16384))
    got = {e.label: e for e in a.candidates}
    q, b = got["quad"], got["bent"]
    assert q.extrapolated and q.basis == "extrapolated from n = 1024..4096"
    assert q.time_ms == pytest.approx(16384**2 / 1e5, rel=1e-9)
    assert q.peak_mem_bytes == pytest.approx(16384 * 1000, rel=1e-9)
    # inputs grow with n: 4x the longest length's inputs
    assert q.memory_bytes == pytest.approx(16384 * 1000 + straight[-1]["input_bytes"] * 4, rel=1e-9)
    qlo, qhi = q.time_ms_interval
    assert qlo <= q.time_ms <= qhi and qhi / qlo < 1.2  # only the 1% noise
    blo, bhi = b.time_ms_interval
    assert blo <= b.time_ms <= bhi and math.log(bhi / blo) > 2 * math.log(qhi / qlo) + 0.5


def test_what_cannot_be_estimated_is_excluded_with_its_reason(tmp_path):
    rows = [
        row("one", 1024, 1.0),
        row("dies", 1024, 1.0),
        row("dies", 2048, 1.0, status="oom"),
        row("far", 512, 0.5),
        row("far", 1024, 1.0),
        row("far", 2048, 2.0),
        row("never", 1024, 0, status="unsupported"),
    ]
    df = frame(rows, tmp_path)
    why = {d["label"]: d["reason"] for d in advise(df, Constraints(4096)).excluded}
    assert why["one"] == "measured at one length only (n = 1024): nothing to fit"
    assert why["dies"] == "oom already at n = 2048, shorter than 4096"
    assert why["never"].startswith("unsupported already at n = 1024")
    assert "far" not in why
    why = {d["label"]: d["reason"] for d in advise(df, Constraints(2048 * 17)).excluded}
    assert why["far"].startswith("not measured near n = 34816")
    why = {d["label"]: d["reason"] for d in advise(df, Constraints(256)).excluded}
    assert why["far"] == "not measured at or below n = 256 (shortest 512)"


def test_mixed_configurations_are_refused_and_filters_choose(tmp_path):
    rows = [row("full", 1024, 1.0), row("full", 1024, 2.0, dtype="float64"), row("full", 1024, 3.0, mode="fwdbwd")]
    df = frame(rows, tmp_path)
    with pytest.raises(AdviseError, match="mix 2 configurations.*--dtype float32/float64"):
        advise(df, Constraints(1024))
    a = advise(df, Constraints(1024, filters={"dtype": "float64"}))
    assert a.candidates[0].time_ms == 2.0
    a = advise(df, Constraints(1024, mode="fwdbwd"))
    assert a.candidates[0].time_ms == 3.0
    with pytest.raises(AdviseError, match="no decode points"):
        advise(df, Constraints(1024, mode="decode"))
    with pytest.raises(AdviseError, match="heads = 3"):
        advise(df, Constraints(1024, filters={"heads": 3}))


def test_bad_constraints_are_refused():
    for bad in (dict(seq_len=0), dict(seq_len=1024, max_error=-0.1), dict(seq_len=1024, max_error=math.nan),
                dict(seq_len=1024, memory_budget_bytes=0), dict(seq_len=1024, filters={"colour": 1})):  # fmt: skip
        with pytest.raises(AdviseError):
            Constraints(**bad)


# ------------------------------------------------------------------------------- committed sweeps
def by_hand(path, n, budget=None, max_error=None):
    """The fastest ok row at n meeting the constraints, read off the file with pandas alone."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    newest = {}
    for r in rows:
        if r.get("mode", "fwd") == "fwd" and r["seq_len"] == n:
            newest[r["label"]] = r
    ok = []
    for r in newest.values():
        if r["status"] != "ok":
            continue
        if budget is not None and r["input_bytes"] + r["peak_mem_bytes"] > budget:
            continue
        err = 0.0 if r["label"] == "full" else r.get("rel_err_vs_full")
        if max_error is not None and (err is None or err > max_error):
            continue
        ok.append((r["time_ms"], r["label"], r["time_ci_ms"]))
    ok.sort()
    return ok, set(newest)


@pytest.mark.parametrize(
    "path,n,budget,max_error",
    [
        (SWEEP, 4096, None, None),
        (SWEEP, 8192, 100 << 20, None),
        (SWEEP, 16384, 300 << 20, None),
        (SWEEP, 1024, 3 << 20, None),
        (WITH_ERRORS, 4096, None, 1.0),
        (WITH_ERRORS, 2048, 20 << 20, 3.0),
        (WITH_ERRORS, 1024, None, 0.0),
    ],
)
def test_on_committed_sweeps_the_answer_is_the_hand_computed_one(path, n, budget, max_error):
    ok, everyone = by_hand(path, n, budget, max_error)
    a = advise(latest(load(str(path))), Constraints(n, memory_budget_bytes=budget, max_error=max_error))
    assert labels(a) == [lab for _, lab, _ in ok]
    assert [e.time_ms for e in a.candidates] == pytest.approx([t for t, _, _ in ok])
    assert not any(e.extrapolated for e in a.candidates)
    # every other variant of the file is listed with a reason
    assert {d["label"] for d in a.excluded} == everyone - set(labels(a))
    assert all(d["reason"] for d in a.excluded)
    # the recommended is the fastest: no other candidate's interval lies wholly below its own
    if ok:
        lo0, hi0 = ok[0][2]
        assert all(ci[1] >= lo0 for _, _, ci in ok[1:])
        assert set(a.tied) == {lab for _, lab, ci in ok[1:] if ci[0] <= hi0}


def test_extrapolated_figures_hold_a_measured_point_held_out(tmp_path):
    """Drop the longest length of the committed sweep and estimate it: the measured figure of the
    variants with a steady exponent lies in the estimate's interval."""
    df = latest(load(str(SWEEP)))
    a = advise(df[df["seq_len"] < 16384], Constraints(16384))
    truth = {r["label"]: r["time_ms"] for r in df[(df["seq_len"] == 16384) & (df["status"] == "ok")].to_dict("records")}
    inside = [e.label for e in a.candidates if e.time_ms_interval[0] <= truth[e.label] <= e.time_ms_interval[1]]
    assert all(e.extrapolated for e in a.candidates)
    assert len(inside) >= 0.7 * len(a.candidates), (inside, [(e.label, e.time_ms_interval) for e in a.candidates])


def test_decision_grid_agrees_with_advise_at_its_cells(tmp_path):
    df = latest(load(str(SWEEP)))
    g = decision_grid(df, "memory", n_lengths=6, n_ys=5)
    assert g.measured_to == 16384 and g.lengths[-1] > 16384
    for i in (0, 2, 4):
        for j in (0, 3, len(g.lengths) - 1):
            want = advise(df, Constraints(g.lengths[j], memory_budget_bytes=int(g.ys[i]))).recommended
            assert g.best[i][j] == want


# ------------------------------------------------------------------------------- the command
def test_the_command_prints_a_table_within_100_columns_and_json(cli_here):
    code, out, err = cli_here("advise", str(SWEEP), "--seq-len", "64k", "--memory-budget", "1GB")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "recommended: " in out and "excluded:" in out and "~" in out and "extrapolated 4k-16k" in out
    code, out, err = cli_here("advise", str(SWEEP), "--seq-len", "8k", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert set(d) >= {"recommended", "candidates", "excluded"}
    c = d["candidates"][0]
    assert d["recommended"] == c["label"]
    assert set(c) >= {"label", "time_ms", "peak_mem_bytes", "rel_err", "extrapolated", "time_ms_interval"}
    assert len(c["time_ms_interval"]) == 2


@pytest.mark.parametrize(
    "args,says",
    [
        (["--seq-len", "0"], "--seq-len"),
        (["--seq-len", "abc"], "--seq-len"),
        (["--seq-len", "1k,2k"], "one length"),
        (["--seq-len", "1k", "--max-error", "-0.5"], "--max-error"),
        (["--seq-len", "1k", "--max-error", "abc"], "--max-error"),
        (["--seq-len", "1k", "--max-error", "nan"], "--max-error"),
        (["--seq-len", "1k", "--memory-budget", "5XB"], "--memory-budget"),
        (["--seq-len", "1k", "--mode", "backward"], "--mode"),
        (["--seq-len", "1k", "--causal", "maybe"], "--causal"),
        (["--seq-len", "1k", "--mode", "decode"], "no decode points"),
        (["--seq-len", "1k", "--dtype", "float16"], "dtype = float16"),
        (["--seq-len", "1k", "--seq-len", "2k"], "given 2 times"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli_here, args, says):
    code, out, err = cli_here("advise", str(SWEEP), *args)
    assert code == 2 and says in err, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_foreign_and_task_files_are_refused(cli_here, tmp_path):
    code, _, err = cli_here("advise", str(tmp_path / "nope.jsonl"), "--seq-len", "1k")
    assert code == 2 and "does not exist" in err
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("this is not json\n")
    code, _, err = cli_here("advise", str(foreign), "--seq-len", "1k")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    task = ROOT / "results" / "recall-tasks" / "mqar-default.jsonl"
    code, _, err = cli_here("advise", str(task), "--seq-len", "64")
    assert code == 2 and "no timing points" in err
    refs = ROOT / "results" / "references" / "references-cpu.jsonl"
    code, _, err = cli_here("advise", str(refs), "--seq-len", "1k")
    assert code == 2 and "benchmarks/references.py" in err


# ------------------------------------------------------------------------------- the default sweep
def test_the_default_sweep_is_the_first_taste_and_the_full_one_a_preset_away():
    from effattn.cli.requests import FIRST_TASTE, default_builtins, default_variants
    from effattn.presets import get_preset

    assert default_variants("cpu", False).split(",") == sorted(FIRST_TASTE)
    # causal: what cannot mask causally (nystrom) is left out, as before
    assert default_variants("cpu", True).split(",") == sorted(set(FIRST_TASTE) - {"nystrom"})
    every = get_preset("all-builtins").options["attn"].split(",")
    assert every == default_builtins("cpu", False) == default_variants("cpu", False, every=True).split(",")


def test_a_sweep_ends_with_the_advice_for_its_longest_length(run_cli, tmp_path):
    out = tmp_path / "s.jsonl"
    r = run_cli("bench", "--seq-lens", "32,64", "--attn", "full,linear", "--heads", "2", "--head-dim", "8",
                "--min-run-time", "0.01", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    tail = r.stdout.split("which one at n = 64?", 1)[1]
    assert f"effattn advise {out} --seq-len N" in tail and "recommended: " in tail
    assert " 1  " in tail and ("full" in tail and "linear" in tail)


# ------------------------------------------------------------------------------- broken rows
def test_rows_with_missing_or_broken_figures_are_judged_honestly(tmp_path):
    """What an adversarial review found: NaN or text in a figure, a point that failed once at a
    short length, too few rounds, too few lengths to extrapolate."""
    n = 1024
    nan_inputs = row("a", n, 1.0, input_bytes=float("nan"))
    text_inputs = row("b", n, 2.0, input_bytes="abc")
    nan_ci = row("c", n, 3.0, time_ci_ms=[float("nan"), float("nan")])
    df = frame([nan_inputs, text_inputs, nan_ci], tmp_path)
    a = advise(df, Constraints(n, memory_budget_bytes=1 << 40))
    # without the inputs' size, inputs + peak is unknown: not "fits"
    assert labels(a) == ["c"]
    assert {d["label"]: d["reason"] for d in a.excluded} == {
        "a": "its memory was not measured",
        "b": "its memory was not measured",
    }
    lo, hi = a.candidates[0].time_ms_interval  # from its round times instead
    assert lo <= 3.0 <= hi and math.isfinite(hi)
    assert "NaN" not in json.dumps(advise(df, Constraints(n)).as_dict())
    # an error at 1k says nothing against ok points at 2k..8k
    rows = [row("w", 1024, 0, status="error")] + [row("w", m, m / 100) for m in (2048, 4096, 8192)]
    a = advise(frame(rows, tmp_path), Constraints(16384))
    assert labels(a) == ["w"] and a.candidates[0].extrapolated
    # two lengths do not show whether the exponent still moves: no extrapolation
    a = advise(frame([row("x", 1024, 1.0), row("x", 2048, 2.0)], tmp_path), Constraints(4096))
    assert a.excluded[0]["reason"].startswith("measured at 2 lengths only")
    # an interval of less than 95% coverage orders nothing: unbounded, null in JSON, tied
    few = [row("y", n, 1.0, time_ci_coverage=0.75), row("z", n, 5.0)]
    a = advise(frame(few, tmp_path), Constraints(n))
    assert a.candidates[0].time_ms_interval == (0.0, math.inf) and a.tied == ["z"]
    assert a.as_dict()["candidates"][0]["time_ms_interval"] == [0.0, None]


def test_a_mix_that_differs_in_an_unset_field_names_it_and_probes_are_left_out(tmp_path, cli_here):
    rows = [row("full", 1024, 1.0), row("full", 1024, 2.0, kv_heads=1), row("linear", 1024, 0.5, probe="find-max-len")]
    df = frame(rows, tmp_path)
    with pytest.raises(AdviseError, match="--kv-heads 1/none"):
        advise(df, Constraints(1024))
    assert labels(advise(df, Constraints(1024, filters={"kv_heads": 1}))) == ["full"]
    assert labels(advise(df, Constraints(1024, filters={"kv_heads": None}))) == ["full"]
    code, out, err = cli_here("advise", str(tmp_path / "rows.jsonl"), "--seq-len", "1k", "--kv-heads", "1")
    assert code == 0 and "linear" not in out, err
    code, _, err = cli_here("advise", str(tmp_path), "--seq-len", "1k")
    assert code == 2 and "is a folder" in err
