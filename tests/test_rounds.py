"""Interleaved rounds, load detection, intervals, crossovers and the statistical compare.

Load is simulated (the reference kernel's rate is scripted) where a real background load would
make a test flaky; speed targets live in benchmarks/repeatability.py, not here.
"""

import json
import math
from collections import Counter

import pytest

from effattn.bench import SweepSpec, timing
from effattn.bench.group import measure_group
from effattn.bench.timing import schedule
from effattn.guard import TorchState
from effattn.results import summary
from effattn.spec import Variant
from effattn.stats import crossover, exponent_ci, median_ci, min_p_value, slower_test, verdict

SPEC = dict(seq_lens=[64], variants=[], heads=2, head_dim=8, min_run_time_s=0.02, error=False)
# blocks of 40 ms: every variant takes part in every round even on a busy machine (where one call
# of a tiny attention can take milliseconds), so the scripted load meets the rounds it expects
LOAD_SPEC = {**SPEC, "min_run_time_s": 0.4}


# ------------------------------------------------------------------------------- the round order
def test_every_round_holds_every_variant_in_a_varying_order():
    plan = schedule(["a", "b", "c"], 10, seed=1)
    assert len(plan) == 10 and all(sorted(r) == ["a", "b", "c"] for r in plan)
    assert len({tuple(r) for r in plan}) > 1, "the order must vary between rounds"
    assert len(Counter(r[0] for r in plan)) >= 2  # no variant is always measured first
    assert schedule(["a", "b"], 10, seed=1) == schedule(["a", "b"], 10, seed=1)  # reproducible


def test_a_length_of_slow_points_takes_fewer_rounds_but_at_least_six():
    from effattn.bench.timing import rounds_for

    rounds, calls = rounds_for({"fast": 1e-4, "also_fast": 2e-4}, 0.2)
    assert rounds == 10 and calls == {"fast": 200, "also_fast": 100}  # blocks of a tenth of 0.2 s
    rounds, calls = rounds_for({"fast": 1e-4, "slow": 0.03}, 0.2)  # a round: 20 ms + 30 ms
    assert rounds == 8 and calls["slow"] == 1  # 0.4 s of budget / 0.05 s
    rounds, calls = rounds_for({"fast": 1e-4, "slow": 0.09}, 0.2)  # 0.4 s / 0.11 s: 4, raised
    assert rounds == 6 and calls["slow"] == 1  # 6 rounds: the fewest whose median has a 95% interval
    rounds, _ = rounds_for({"very_slow": 5.0}, 0.2)
    assert rounds == 6


def test_a_group_is_timed_in_rounds_with_the_reference_between_them():
    spec = SweepSpec(**SPEC)
    rows = measure_group(spec, [Variant("full", {}), Variant("linear", {}), Variant("naive", {})], 64)
    assert [r["status"] for r in rows] == ["ok"] * 3
    for r in rows:
        assert r["rounds"] == len(r["time_raw_ms"]) >= 6 and r["time_ci_coverage"] >= 0.95
        lo, hi = r["time_ci_ms"]
        assert lo <= r["time_ms"] <= hi
        assert r["rounds_total"] == len(r["probe_gflops_raw"]) >= r["rounds"]
        # the host's state is not this test's subject: on a busy host (CI's one-minute load average
        # stays high after the tests before) the group is flagged, and then it must say why; the
        # verdict itself is tested on fake meters (test_integrity_round2, the load tests below)
        assert r["matmul_peak_gflops"] > 0 and (r["loaded"] is False or bool(r["load_reasons"]))
    assert rows[0]["matmul_peak_gflops"] == rows[1]["matmul_peak_gflops"]  # one reference for the group


def test_ratios_are_paired_round_by_round_within_one_group_only():
    from effattn.results import paired_ratio

    # the load doubled rounds 1 and 2 for both points: round by round the ratio stays 0.5
    a = {"group_id": "g", "time_round_ids": [0, 1, 2, 3], "time_raw_ms": [1.0, 2.0, 2.0, 1.0]}
    full = {"group_id": "g", "time_round_ids": [0, 1, 2, 3], "time_raw_ms": [2.0, 4.0, 4.0, 2.0]}
    med, lo, hi, cov = paired_ratio(a, full)
    assert med == lo == hi == 0.5
    assert cov == pytest.approx(1 - 2 / 2**4)  # 4 rounds: [min, max] covers the median 87.5% of the time
    assert paired_ratio({**a, "group_id": "other"}, full) is None  # another process's round 0 is no pair
    assert paired_ratio({"time_ms": 1.0}, full) is None


# ------------------------------------------------------------------------------- load detection
def _scripted_reference(monkeypatch, rates):
    """The reference kernel reports these rates in turn (then the last one forever)."""
    it = iter(rates)
    last = [rates[-1]]

    def gflops(self):
        try:
            last[0] = next(it)
        except StopIteration:
            pass
        return last[0]

    monkeypatch.setattr(timing.Reference, "gflops", gflops)
    monkeypatch.setattr(timing, "_PROBE_HISTORY", {})


def test_loaded_rounds_are_set_aside_and_measured_again(monkeypatch):
    # one reference before round 0 and one after each round (round r is bracketed by readings r
    # and r + 1): readings 3-5 at half speed put rounds 2-5 under load
    rates = [100.0] * 3 + [50.0] * 3 + [100.0] * 100
    _scripted_reference(monkeypatch, rates)
    row = measure_group(SweepSpec(**LOAD_SPEC), [Variant("full", {})], 64)[0]
    assert row["loaded_rounds"] == 4 and row["loaded_rounds_total"] == 4
    assert row["rounds"] == 10 and row["rounds_total"] == 14  # four extra rounds replace the loaded ones
    assert row["loaded"] is False and row["matmul_peak_gflops"] == 100.0


def test_a_load_that_does_not_leave_flags_the_point(monkeypatch):
    _scripted_reference(monkeypatch, [100.0] * 3 + [40.0] * 10000)
    monkeypatch.setattr(timing, "LOAD_WAIT_S", 0.3)
    row = measure_group(SweepSpec(**LOAD_SPEC), [Variant("full", {})], 64)[0]
    assert row["loaded"] is True and row["status"] == "ok"
    # the least loaded rounds are used (the three quiet ones and the best of the rest), and it says so
    assert row["rounds"] == 6 and row["rounds_total"] >= 10
    assert sorted(row["time_round_ids"])[:3] == [0, 1, 2]


def test_a_load_present_from_the_start_is_found_once_a_quiet_round_sets_the_bar(monkeypatch):
    _scripted_reference(monkeypatch, [40.0] * 5 + [100.0] * 1000)  # quiet only from round 5 on
    row = measure_group(SweepSpec(**LOAD_SPEC), [Variant("full", {})], 64)[0]
    assert row["loaded_rounds"] == 5 and row["loaded"] is False
    assert row["rounds"] == 10  # five extra rounds, once the quiet ones showed what quiet is


# ------------------------------------------------------------------------------- intervals
def test_median_interval_from_order_statistics():
    lo, hi, cov = median_ci(list(range(1, 11)))  # 10 samples: ranks 2 and 9 give 97.9%
    assert (lo, hi) == (2.0, 9.0) and abs(cov - 0.9785) < 1e-3
    lo, hi, cov = median_ci([3.0, 1.0, 2.0])  # too few for 95%: min..max, its coverage said
    assert (lo, hi) == (1.0, 3.0) and abs(cov - 0.75) < 1e-9
    assert median_ci([])[2] == 0.0


def test_exponent_interval_covers_the_true_slope():
    import random

    rng = random.Random(0)
    lens = [1024, 2048, 4096, 8192]
    samples = [[1e-6 * n**2 * (1 + 0.05 * rng.gauss(0, 1)) for _ in range(10)] for n in lens]
    lo, hi = exponent_ci(lens, samples)
    assert lo < 2.0 < hi and hi - lo < 0.2
    assert math.isnan(exponent_ci([1024], [[1.0]])[0])


@pytest.mark.parametrize(
    "verdicts,expected",
    [
        (["slower", "slower", "faster", "faster"], (512, 1024)),  # resolved: from 1024
        (["slower", "unresolved", "faster", "faster"], (256, 1024)),  # between 256 and 1024
        (["faster"] * 4, (None, 256)),  # faster everywhere
        (["unresolved", "unresolved", "faster", "faster"], (None, 1024)),  # at most 1024
        (["faster", "slower", "faster", "unresolved"], (None, None)),  # not faster at the longest
        (["slower"] * 4, (None, None)),
        (["slower", "faster", "unresolved", "faster"], (256, 2048)),  # the unresolved 1024 may be slower
        (["faster", "unresolved", "faster", "faster"], (None, 1024)),  # no resolved slower: at most 1024
    ],
)
def test_crossover_from_verdicts(verdicts, expected):
    assert crossover([256, 512, 1024, 2048], verdicts) == expected


def test_verdicts_from_intervals():
    assert verdict((1, 2), (3, 4)) == "faster" and verdict((3, 4), (1, 2)) == "slower"
    assert verdict((1, 3), (2, 4)) == "unresolved"


def _row(label, n, samples, **extra):
    s = sorted(samples)
    lo, hi, _ = median_ci(s)
    return {
        "label": label,
        "variant": label,
        "options": {},
        "seq_len": n,
        "status": "ok",
        "time_ms": s[len(s) // 2],
        "time_raw_ms": s,
        "time_ci_ms": [lo, hi],
        "peak_mem_bytes": n,
        "device": "cpu",
        "dtype": "float32",
        "batch": 1,
        "heads": 8,
        "head_dim": 64,
        "causal": False,
        "mode": "fwd",
        "level": "attention",
        **extra,
    }


def test_an_unresolved_crossover_is_a_range_and_a_resolved_one_a_number():
    import pandas as pd

    full = [
        _row("full", n, [t * f for f in (0.95, 1, 1.05, 0.97, 1.02, 1.0, 0.99)])
        for n, t in ((256, 10), (512, 20), (1024, 40), (2048, 80))
    ]
    # overlaps full at 512 (unresolved), clearly faster from 1024
    fuzzy = [
        _row("fuzzy", n, [t * f for f in (0.6, 1, 1.4, 0.8, 1.2, 1.0, 0.9)])
        for n, t in ((256, 30), (512, 20), (1024, 20), (2048, 20))
    ]
    crisp = [
        _row("crisp", n, [t * f for f in (0.99, 1, 1.01, 1.0, 1.0, 1.0, 1.0)])
        for n, t in ((256, 30), (512, 30), (1024, 20), (2048, 20))
    ]
    s = summary(pd.DataFrame(full + fuzzy + crisp)).set_index("label")
    assert s.loc["fuzzy", "crossover"] == "between 256 and 1024"
    assert pd.isna(s.loc["fuzzy", "faster_than_full_from"])  # no single number where the data cannot say
    assert s.loc["crisp", "crossover"] == "1024" and s.loc["crisp", "faster_than_full_from"] == 1024


@pytest.mark.parametrize("rounds,expected", [(4, "-"), (6, "256")])
def test_a_paired_ratio_of_too_few_rounds_decides_nothing(rounds, expected):
    """Two points timed in the same rounds, the variant half of full's time in every round: with 4
    rounds [min, max] covers the median ratio only 87.5% of the time, so no length is resolved (no
    crossover is claimed); with 6 the interval is a 95% one and decides."""
    import pandas as pd

    rows = []
    for n in (256, 512, 1024):
        ids = list(range(rounds))
        base = [float(n) * (1 + 0.01 * i) for i in ids]
        for label, ts in (("full", base), ("half", [t / 2 for t in base])):
            lo, hi, cov = median_ci(ts)
            rows.append(
                _row(
                    label,
                    n,
                    ts,
                    group_id=f"g{n}",
                    time_round_ids=ids,
                    time_raw_ms=ts,
                    time_ci_ms=[lo, hi],
                    time_ci_coverage=cov,
                )
            )
    s = summary(pd.DataFrame(rows)).set_index("label")
    assert s.loc["half", "crossover"] == expected


# ------------------------------------------------------------------------------- the compare test
def test_the_rank_test():
    base = [10.0, 10.2, 9.9, 10.1, 10.05, 9.95, 10.0, 10.1]
    assert slower_test(base, [x * 1.3 for x in base]) < 0.01
    assert slower_test(base, list(base)) > 0.4
    assert min_p_value(1, 1) == 0.5 and min_p_value(3, 3) == 0.05


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "new_samples,loaded,verdict_text,code",
    [
        ([13.0, 13.2, 12.9, 13.1, 13.05, 12.95, 13.0, 13.1], False, "REGRESSION", 1),
        ([10.0, 10.2, 9.9, 10.1, 10.05, 9.95, 10.0, 10.1], False, "0 regressions", 0),
        ([13.0], False, "inconclusive (8 and 1 samples", 0),  # one sample: never a regression
        ([9.0, 9.5, 14.0, 16.0, 11.5, 12.0, 9.8, 15.0], False, "inconclusive (slower, but not beyond the noise)", 0),
        ([13.0, 13.2, 12.9, 13.1, 13.05, 12.95, 13.0, 13.1], True, "inconclusive (measured while", 0),
    ],
)
def test_compare_decides_by_the_test_and_the_threshold(cli_here, tmp_path, new_samples, loaded, verdict_text, code):
    base = [10.0, 10.2, 9.9, 10.1, 10.05, 9.95, 10.0, 10.1]
    _write(tmp_path / "a.jsonl", [_row("full", 1024, base)])
    _write(tmp_path / "b.jsonl", [_row("full", 1024, new_samples, loaded=loaded)])
    got, out, err = cli_here("compare", "a.jsonl", "b.jsonl")
    assert got == code, out + err
    assert verdict_text in out, out


def test_two_runs_of_one_sample_each_are_never_a_regression(cli_here, tmp_path):
    """Old files (one timing sample per point) cannot show a significant change."""
    a = [{**_row("full", n, [10.0]), "time_raw_ms": None, "time_ci_ms": None} for n in (256, 512)]
    b = [{**_row("full", n, [30.0]), "time_raw_ms": None, "time_ci_ms": None} for n in (256, 512)]
    _write(tmp_path / "a.jsonl", a)
    _write(tmp_path / "b.jsonl", b)
    got, out, _ = cli_here("compare", "a.jsonl", "b.jsonl")
    assert got == 0 and "0 regressions" in out and "2 inconclusive" in out


def test_one_burst_of_turbo_clock_does_not_make_every_round_loaded(monkeypatch):
    """The bar is the third-highest reading: one or two readings far above the rest (a turbo
    burst) are passed over, where the maximum would have called every later round loaded."""
    assert timing.quiet_rate([100.0] * 10 + [300.0, 280.0]) == 100.0
    assert timing.quiet_rate([50.0]) == 50.0 and timing.quiet_rate([]) == 0.0
    _scripted_reference(monkeypatch, [300.0, 100.0, 290.0] + [100.0] * 1000)
    row = measure_group(SweepSpec(**LOAD_SPEC), [Variant("full", {})], 64)[0]
    assert row["loaded"] is False and row["loaded_rounds_total"] == 0 and row["rounds_total"] == 10


@pytest.mark.parametrize("lose", [1, 10**6])
def test_a_profile_that_lost_its_events_is_taken_again_and_never_reads_as_zero(monkeypatch, lose):
    """The CPU profiler now and then records no allocator event for a call. Lost once: the call is
    profiled again and the memory is measured. Lost every time: the memory is unknown (None, and
    the row says why), never 0."""
    from effattn.bench import measure

    real, left = measure.profile_memory, [lose]

    def flaky(fn, device, with_events=False):
        result, peak, net, seen = real(fn, device, with_events=True)
        if left[0] > 0:
            left[0] -= 1
            peak, net, seen = 0, 0, 0
        return (result, peak, net, seen) if with_events else (result, peak, net)

    monkeypatch.setattr(measure, "profile_memory", flaky)
    row = measure_group(SweepSpec(**SPEC), [Variant("naive", {})], 64)[0]
    assert row["status"] == "ok"
    if lose == 1:
        assert row["peak_mem_bytes"] >= 2 * 64 * 64 * 4 and "memory_unmeasured" not in row  # the 2 heads x n x n scores
    else:
        assert row["peak_mem_bytes"] is None and row["retained_bytes"] is None
        assert "no allocator event" in row["memory_unmeasured"]
        import pandas as pd

        summary(pd.DataFrame([{**row, "seq_len": n} for n in (64, 128)]))  # a row without memory is summarised


def test_a_plugin_that_lowers_matmul_precision_is_caught_and_undone():
    """Lowered precision (TF32, bf16 passes) would speed up every later point and the reference."""
    import torch

    before = torch.get_float32_matmul_precision()
    guard = TorchState()
    torch.set_float32_matmul_precision("medium" if before != "medium" else "high")
    try:
        assert "float32 matmul precision" in (guard.restore() or "")
        assert torch.get_float32_matmul_precision() == before and guard.restore() is None
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_measuring_process_that_cannot_be_started_says_why_and_leaks_no_descriptor(monkeypatch):
    import os
    import subprocess

    from effattn.bench import worker

    def refuse(*a, **k):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    fds = set(os.listdir("/proc/self/fd"))
    mp = worker.MeasuringProcess()
    why = mp.check([{"name": "full", "options": {}, "label": "full"}], 5.0)
    assert why == ["the measuring process could not be started: [Errno 11] Resource temporarily unavailable"]
    assert set(os.listdir("/proc/self/fd")) <= fds
