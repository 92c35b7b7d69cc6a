"""An exact plugin whose output is wrong is never `ok`: every exact point is checked against its
own dense pattern in float64 (effattn.bench.exactness), and a failed check is an `error` with the
measured figure in the row, the summary and the report.

The plugins of tests/plugins/demo_wrong are exact attention except for one subtle thing each
(scale, mask, length, noise, causal only, padding only, one head, nondeterminism, a shifted row,
the backward, the last row, a window edge); a sweep of them, as a user runs it, gives no `ok`.
"""

import json

import pytest
import torch

from effattn.reference import (
    ReferenceTimeout,
    determinism_tolerance,
    full_reference,
    reference_attention,
    sample_rows,
    tolerance,
)

TINY = ["--min-run-time", "0.01", "--heads", "2", "--head-dim", "16"]
WRONG = [
    "wrong_scale",
    "wrong_mask",
    "wrong_past_len",
    "wrong_noise",
    "wrong_causal",
    "wrong_padding",
    "wrong_heads",
    "wrong_nondeterministic",
    "wrong_row",
    "wrong_backward",
    "wrong_last_row",
    "wrong_window_edge",
]


def _rows(path):
    return [json.loads(x) for x in open(path).read().splitlines() if x.strip()]


@pytest.fixture
def bench(plugin_site, run_cli, tmp_path):
    def run(*args, timeout=600):
        r = run_cli("bench", *args, env_extra={"PYTHONPATH": str(plugin_site)}, cwd=str(tmp_path), timeout=timeout)
        return r

    return run


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd-causal"])
def test_no_subtly_wrong_exact_plugin_is_ok(bench, tmp_path, mode):
    """Lengths past 300 (where wrong_past_len starts to be wrong) and no multiple of a block."""
    extra = ["--causal", "--mode", "fwdbwd"] if mode == "fwdbwd-causal" else []
    r = bench("--attn", ",".join(["full"] + WRONG), "--seq-lens", "333,700", *TINY, *extra, "--out", "w.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {(x["label"], x["seq_len"]): x for x in _rows(tmp_path / "w.jsonl")}
    assert len(rows) == 2 * (len(WRONG) + 1)
    for (label, n), row in rows.items():
        if label == "full":
            assert row["status"] == "ok", row["reason"]
            assert row["exact_check"].startswith("passed: forward, determinism, padded")
            assert row["rel_err_vs_own_dense"] < 1e-5
        elif label == "wrong_backward" and mode == "fwd":
            # its forward is right, and a forward sweep computes no gradient: a correct row
            assert row["status"] == "ok", row["reason"]
        else:
            assert row["status"] == "error", (label, n, row["status"], row.get("exact_check"))
            assert row["reason"].startswith("not exact: "), row["reason"]
            assert row["exact_errors"] and row["exact_tolerance"] == 1e-5
    # the figure is in the summary the sweep prints, and in the report
    out = r.stdout
    assert "points that are errors (not measured correctly):" in out
    assert "wrong_scale n=333: not exact: the output differs from its own dense_mask's pattern by 1.00e-02" in out
    rep = bench_report(tmp_path, "w.jsonl")
    assert "**1.0e-02 ✗**" in rep  # wrong_scale's forward error, flagged in the correctness table


def bench_report(tmp_path, name):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "effattn.cli", "report", name, "--out", "rep"],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return (tmp_path / "rep" / "report.md").read_text()


def test_each_kind_of_wrongness_is_named_with_its_figure(with_plugins):
    """In-process, one point each: which comparison failed, and by how much."""
    from effattn.bench import SweepSpec, measure_point
    from effattn.spec import Variant

    def point(name, **kw):
        spec = SweepSpec(seq_lens=[333], variants=[Variant(name, {})], heads=2, head_dim=16, min_run_time_s=0.01, **kw)
        return measure_point(spec, spec.variants[0], 333)

    cases = {
        "wrong_scale": ("the output differs from its own dense_mask's pattern by 1.00e-02", {}),
        "wrong_causal": ("the causal output (not this row's) differs", {}),
        "wrong_padding": ("with key padding, the output differs", {}),
        "wrong_nondeterministic": ("two calls on the same inputs differ", {}),
        "wrong_backward": ("the gradient of q differs by 2.00e-02", {"mode": "fwdbwd"}),
    }
    for name, (needle, kw) in cases.items():
        row = point(name, **kw)
        assert row["status"] == "error" and needle in row["reason"], (name, row["reason"])
    ok = point("full")
    assert ok["status"] == "ok" and ok["exact_errors"]["determinism"] == 0.0
    assert set(ok["exact_errors"]) == {"forward", "determinism", "padded", "causal"}


def test_an_approximate_plugin_is_not_held_to_a_pattern_and_long_rows_say_why():
    from effattn.bench import SweepSpec, measure_point
    from effattn.bench.exactness import MASK_MAX_N
    from effattn.spec import Variant

    spec = SweepSpec(seq_lens=[64], variants=[Variant("linear", {})], heads=2, head_dim=8, min_run_time_s=0.01)
    row = measure_point(spec, spec.variants[0], 64)
    assert row["status"] == "ok" and row["exact_check"] == "not applicable: an approximate plugin"
    n = MASK_MAX_N + 1
    spec = SweepSpec(
        seq_lens=[n], variants=[Variant("sliding_window", {"window": 4})], heads=1, head_dim=8, min_run_time_s=0.01
    )
    row = measure_point(spec, spec.variants[0], n)
    assert row["status"] == "ok"
    assert row["exact_check"] == f"not computed: n = {n} > {MASK_MAX_N} (the float64 reference needs the n x n mask)"


def test_layer_and_model_points_check_their_core_too(with_plugins):
    from effattn.bench import SweepSpec, measure_point
    from effattn.spec import Variant

    for level in ("layer", "model"):
        spec = SweepSpec(seq_lens=[40], variants=[Variant("wrong_scale", {})], heads=2, head_dim=8,
                         min_run_time_s=0.01, level=level)  # fmt: skip
        row = measure_point(spec, spec.variants[0], 40)
        assert row["status"] == "error" and "1.00e-02" in row["reason"], (level, row["reason"])
        spec = SweepSpec(seq_lens=[40], variants=[Variant("full", {})], heads=2, head_dim=8, min_run_time_s=0.01,
                         level=level)  # fmt: skip
        row = measure_point(spec, spec.variants[0], 40)
        assert row["status"] == "ok" and row["exact_check"].startswith("passed"), row


def test_decode_steps_of_an_exact_plugin_are_checked(with_plugins):
    from effattn.bench import SweepSpec, measure_point
    from effattn.spec import Variant

    spec = SweepSpec(seq_lens=[50], variants=[Variant("wrong_scale", {})], heads=2, head_dim=8, min_run_time_s=0.01,
                     mode="decode", causal=True)  # fmt: skip
    row = measure_point(spec, spec.variants[0], 50)
    assert row["status"] == "error" and "the step's output differs" in row["reason"], row["reason"]


# ------------------------------------------------------------------------- the references alone
def test_the_blocked_reference_equals_one_dense_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 37, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(37, 37, generator=g) > 0.5
    mask[3] = False  # a row with no key: zeros
    pad = torch.zeros(2, 37, dtype=torch.bool)
    pad[1, 20:] = True
    allowed = mask & ~pad[:, None, None, :]
    s = (q @ k.transpose(-2, -1)) / 8**0.5
    s = s.masked_fill(~allowed, float("-inf"))
    want = torch.nan_to_num(s.softmax(-1)) @ v
    import effattn.reference as ref

    old = ref.BLOCK_ELEMENTS
    try:
        ref.BLOCK_ELEMENTS = 2 * 4 * 37 * 5  # blocks of 5 rows
        got = reference_attention(q, k, v, mask, key_padding_mask=pad)
        rows = torch.tensor([0, 3, 36])
        some = reference_attention(q, k, v, mask, key_padding_mask=pad, rows=rows)
    finally:
        ref.BLOCK_ELEMENTS = old
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.equal(got[:, :, 3], torch.zeros_like(got[:, :, 3]))
    assert torch.allclose(some, want[:, :, rows], atol=1e-12)


def test_a_reference_that_cannot_finish_in_time_says_how_long_it_would_take():
    import effattn.reference as ref

    q = k = v = torch.randn(1, 1, 64, 8)
    old = ref.BLOCK_ELEMENTS
    try:
        ref.BLOCK_ELEMENTS = 64  # one row per block: 64 blocks
        import time

        with pytest.raises(ReferenceTimeout, match="would take about"):
            full_reference(q, k, v, False, deadline=time.monotonic() - 1, one_call=False)
        out = full_reference(q, k, v, True, deadline=time.monotonic() + 60, one_call=False)
    finally:
        ref.BLOCK_ELEMENTS = old
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out, want, atol=1e-6)


def test_tolerances_follow_the_dtype():
    assert tolerance("float32") == tolerance(torch.float32) == 1e-5
    assert tolerance("float64") < tolerance("float32") < tolerance("float16") < tolerance("bfloat16")
    assert determinism_tolerance("float32") == pytest.approx(8 * torch.finfo(torch.float32).eps)
    rows = sample_rows(10_000)
    assert len(rows) == 256 and rows[0] == 0 and rows[-1] == 9_999 and len(set(rows.tolist())) == 256
    assert torch.equal(sample_rows(100), torch.arange(100))
