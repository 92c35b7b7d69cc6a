"""Decoding and grouped-query heads: the contract, the built-in caches, the checks that catch a
wrong cache, the sweep's decode mode and its bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from effattn import create_attention
from effattn.attention.base import AttentionBase
from effattn.decoding import Recompute, decoder_for
from effattn.errors import EffattnError, UnsupportedError
from effattn.kernels import caches
from effattn.testing import run_checks

CACHED = {
    "full": {},
    "naive": {},
    "masked": {},
    "bigbird": {"block_size": 8, "num_random_blocks": 1},
    "sparse": {"stride": 8},
    "sparse:fixed": {"stride": 8, "pattern": "fixed", "summary": 2},
    "sliding_window": {"window": 6, "global_tokens": 2, "chunk": 8},
    "sliding_window_sinks": {"window": 6, "sinks": 3, "chunk": 8},
    "linear": {},
    "performer": {"num_features": 32},
}


def _build(key):
    return create_attention(key.split(":")[0], **CACHED[key])


def _qkv(B, H, K, n, D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, H, n, D, generator=g, dtype=dtype),
        torch.randn(B, K, n, D, generator=g, dtype=dtype),
        torch.randn(B, K, n, D, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("key", list(CACHED))
def test_every_builtin_cache_passes_the_decode_check(key):
    res = {r.name: r for r in run_checks(_build(key))}
    assert res["decode_matches_causal_forward"].status == "passed", res["decode_matches_causal_forward"].detail
    assert res["grouped_query_heads"].status == "passed", res["grouped_query_heads"].detail


@pytest.mark.parametrize("key", ["full", "sliding_window", "linear", "performer", "sparse:fixed"])
def test_float64_decoding_equals_the_prefix_forward_exactly(key):
    attn = _build(key)
    B, H, K, n, D, p = 2, 4, 2, 50, 8, 9
    q, k, v = _qkv(B, H, K, n, D)
    cache = attn.new_cache(B, K, D, dtype=torch.float64)
    outs = [attn.prefill(cache, q[:, :, :p], k[:, :, :p], v[:, :, :p])]
    for i in range(p, n):
        outs.append(attn.step(cache, q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1]))
    ref = attn(q, k, v, causal=True)
    assert torch.allclose(torch.cat(outs, 2), ref, atol=1e-10)
    assert cache.length == n


def test_cache_sizes_follow_their_formulas_byte_for_byte():
    B, K, D, e = 2, 3, 8, 4
    q, k, v = _qkv(B, 6, K, 100, D, dtype=torch.float32)

    def fill(attn, n):
        c = attn.new_cache(B, K, D)
        attn.prefill(c, q[:, :, :n], k[:, :, :n], v[:, :, :n])
        return c.nbytes()

    full = create_attention("full")
    assert [fill(full, n) for n in (10, 40)] == [2 * B * K * n * D * e for n in (10, 40)]
    sw = create_attention("sliding_window", window=6, global_tokens=2)
    assert fill(sw, 10) == fill(sw, 90) == 2 * B * K * (6 + 1 + 2) * D * e
    sinks = create_attention("sliding_window_sinks", window=6, sinks=4)
    assert fill(sinks, 5) == fill(sinks, 90) == 2 * B * K * (6 + 1 + 4) * D * e
    lin = create_attention("linear")
    assert fill(lin, 3) == fill(lin, 90) == B * K * D * (D + 1) * e
    perf = create_attention("performer", num_features=16)
    assert fill(perf, 3) == fill(perf, 90) == B * K * 16 * (D + 1) * e + B * K * e


def test_kv_cache_truncate_and_growth():
    c = caches.KVCache(1, 1, 4, torch.float32, "cpu", capacity=2)
    for t in range(5):
        c.append(torch.full((1, 1, 1, 4), float(t)), torch.full((1, 1, 1, 4), float(t)))
    assert c.length == 5 and c.capacity >= 5
    assert c.keys()[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4]
    c.truncate(3)
    c.append(torch.full((1, 1, 1, 4), 9.0), torch.full((1, 1, 1, 4), 9.0))
    assert c.keys()[0, 0, :, 0].tolist() == [0, 1, 2, 9]
    with pytest.raises(ValueError, match="holds 4 tokens"):
        c.truncate(5)
    with pytest.raises(ValueError, match="holds 4 tokens"):
        c.truncate(-1)


@pytest.mark.parametrize("K", [1, 2, 8])
@pytest.mark.parametrize("masked", [False, True])
def test_split_step_equals_one_softmax(monkeypatch, K, masked):
    """The segmented step (log-sum-exp merge) is exact, padded keys and empty segments included."""
    monkeypatch.setattr(caches, "SPLIT_MIN_KEYS", 4)
    B, H, L, D = 2, 8, 101, 16
    q, k, v = _qkv(B, H, K, L, D, dtype=torch.float32)
    q = q[:, :, :1]
    keep = None
    if masked:
        keep = torch.rand(B, L, generator=torch.Generator().manual_seed(1)) > 0.5
        keep[1, :60] = False  # whole segments with no key
    got = caches.attend(q, k, v, keep)
    rep = H // K
    kr, vr = k.repeat_interleave(rep, 1).double(), v.repeat_interleave(rep, 1).double()
    s = (q.double() @ kr.transpose(-1, -2)) / D**0.5
    if keep is not None:
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
    want = s.softmax(-1) @ vr
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_a_step_of_a_token_with_no_key_left_is_zeros():
    q, k, v = _qkv(1, 2, 2, 5, 4, dtype=torch.float32)
    keep = torch.zeros(1, 5, dtype=torch.bool)
    assert torch.equal(caches.attend(q[:, :, :1], k, v, keep), torch.zeros(1, 2, 1, 4))


class _LeakyWindow(AttentionBase):
    """A window whose decoding cache is one token too short (a ring of w, not w + 1)."""

    supports_decode = True
    supports_padding = False
    supports_cross = False

    def __init__(self, window: int = 5):
        super().__init__()
        self.window = window

    def dense_mask(self, n_q, n_k, causal=False):
        i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
        m = (i - j).abs() <= self.window
        return m & (j <= i) if causal else m

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        from effattn.kernels.masks import dense_attention

        return dense_attention(q, k, v, self.dense_mask(q.shape[2], k.shape[2], causal))

    def new_cache(self, batch, heads, head_dim, dtype=torch.float32, device="cpu", max_len=0):
        return caches.RingCache(batch, heads, head_dim, dtype, device, fixed=0, ring=self.window)  # bug: w + 1

    def prefill(self, cache, q, k, v, key_padding_mask=None):
        cache.write(k, v)
        return self(q, k, v, causal=True)

    def step(self, cache, q, k, v):
        cache.write(k, v)
        return caches.attend(q, cache.k, cache.v, cache.valid(cache.length - 1, self.window))


def test_a_cache_one_token_short_is_caught():
    res = {r.name: r for r in run_checks(_LeakyWindow())}
    r = res["decode_matches_causal_forward"]
    assert r.status == "failed" and "relative error" in r.detail, r.detail


class _NoStep(AttentionBase):
    supports_decode = True

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        return v


def test_a_declared_but_missing_step_is_a_failed_check_and_an_unsupported_decoder():
    r = {x.name: x for x in run_checks(_NoStep())}["decode_matches_causal_forward"]
    assert r.status == "failed" and "has no new_cache, prefill, step" in r.detail
    with pytest.raises(UnsupportedError, match="declares supports_decode but has no"):
        decoder_for(_NoStep())


def test_recompute_decodes_a_plugin_without_a_cache_and_non_causal_plugins_cannot():
    attn = create_attention("sliding_window", window=3)
    attn.supports_decode = False  # as a third-party plugin without a cache would be
    dec = decoder_for(attn)
    assert isinstance(dec, Recompute) and dec.backend == "recompute"
    q, k, v = _qkv(1, 2, 2, 20, 4)
    cache = dec.new_cache(1, 2, 4, dtype=torch.float64)
    outs = [dec.prefill(cache, q[:, :, :5], k[:, :, :5], v[:, :, :5])]
    outs += [dec.step(cache, q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1]) for i in range(5, 20)]
    assert torch.allclose(torch.cat(outs, 2), attn(q, k, v, causal=True), atol=1e-12)
    assert cache.nbytes() == 3 * 1 * 2 * 20 * 4 * 8
    for name in ("linformer", "nystrom"):
        with pytest.raises(UnsupportedError, match="does not support causal"):
            decoder_for(create_attention(name), name)


def test_plugins_without_gqa_refuse_fewer_kv_heads_and_bad_groupings_are_errors():
    q, k, v = _qkv(1, 4, 2, 16, 8, dtype=torch.float32)
    for name in ("linformer", "nystrom"):
        with pytest.raises(UnsupportedError, match="grouped-query"):
            create_attention(name)(q, k, v)
    # (sparse strided refused them until its pieces ran on the chunked engine's layout: it takes them now)
    assert create_attention("sparse", stride=4)(q, k, v).shape == q.shape
    q3 = torch.randn(1, 3, 16, 8)
    with pytest.raises(ValueError, match="must divide"):
        create_attention("full")(q3, k, v)


def test_backbone_generates_through_caches_as_its_forward_does():
    from effattn.model import build_model

    torch.manual_seed(0)
    for attn, opts, kv in (("full", {}, 2), ("sliding_window", {"window": 4}, 1), ("linformer", None, None)):
        if opts is None:
            with pytest.raises(UnsupportedError, match="causal"):
                build_model("decoder", "tiny", attention=attn)
            continue
        m = build_model("decoder", "tiny", attention=attn, attention_options=opts, n_kv_heads=kv).eval()
        toks = torch.randint(0, 32, (2, 30))
        with torch.no_grad():
            want = m(toks)
            caches = m.new_caches(2)
            got = [m.prefill(caches, toks[:, :7])]
            got += [m.step(caches, toks[:, i : i + 1], i) for i in range(7, 30)]
        assert torch.allclose(torch.cat(got, 1), want, atol=1e-5)
        gen = m.generate(toks[:, :4], 5)
        assert gen.shape == (2, 9) and torch.equal(gen[:, :4], toks[:, :4])
    with pytest.raises(ValueError, match="n_kv_heads"):
        build_model("decoder", "tiny", n_kv_heads=3)
    with pytest.raises(UnsupportedError, match="grouped-query"):
        build_model("encoder", "tiny", attention="nystrom", n_kv_heads=2)
    with pytest.raises(UnsupportedError, match="decoder shape"):
        build_model("encoder", "tiny").new_caches(1)


def test_spec_refuses_bad_decode_requests():
    from effattn.bench.spec import SweepSpec
    from effattn.spec import parse_variants

    vs = parse_variants("full")
    with pytest.raises(EffattnError, match="must divide heads"):
        SweepSpec(seq_lens=[8], variants=vs, kv_heads=3)
    with pytest.raises(EffattnError, match="kv_heads must be an integer"):
        SweepSpec(seq_lens=[8], variants=vs, kv_heads=0)
    with pytest.raises(EffattnError, match="it is causal"):
        SweepSpec(seq_lens=[8], variants=vs, mode="decode")
    assert SweepSpec(seq_lens=[8], variants=vs, kv_heads=8).kv_heads is None  # one spelling


def test_decode_group_rows_carry_the_cache_and_errors():
    from effattn.bench.group import measure_group
    from effattn.bench.spec import SweepSpec
    from effattn.spec import parse_variants

    vs = parse_variants("full,sliding_window:window=16,linear,sparse,moba,nystrom")
    spec = SweepSpec(seq_lens=[64], variants=vs, mode="decode", causal=True, heads=4, head_dim=8,
                     kv_heads=2, min_run_time_s=0.01)  # fmt: skip
    rows = {r["label"]: r for r in measure_group(spec, vs, 64)}
    B, K, D, e = 1, 2, 8, 4
    full = rows["full"]
    assert full["status"] == "ok" and full["decode_backend"] == "native"
    assert full["cache_bytes"] == 2 * B * K * 64 * D * e  # the context, before the step
    assert full["rel_err_vs_full"] < 1e-6 and full["rel_err_vs_own_dense"] < 1e-6
    assert full["membw_peak_gbs"] > 0 and full["tokens_per_s"] > 0 and full["bandwidth_gbs"] > 0
    sw = rows["sliding_window:window=16"]
    assert sw["cache_bytes"] == 2 * B * K * 17 * D * e and sw["rel_err_vs_own_dense"] < 1e-6
    assert sw["rel_err_vs_full"] > 1e-3  # a window of 16 over 65 tokens is not full attention
    assert rows["linear"]["cache_bytes"] == B * K * D * (D + 1) * e
    assert rows["sparse"]["status"] == "ok" and rows["sparse"]["rel_err_vs_own_dense"] < 1e-6
    assert rows["moba"]["status"] == "unsupported" and "grouped-query" in rows["moba"]["reason"]
    assert rows["nystrom"]["status"] == "unsupported" and "causal" in rows["nystrom"]["reason"]


def test_cli_decode_sweep_and_its_bad_inputs(run_cli, tmp_path):
    out = tmp_path / "d.jsonl"
    args = ["--attn", "full,sliding_window_sinks:window=8", "--seq-lens", "32,64", "--heads", "2", "--head-dim", "8"]
    r = run_cli("bench", "--mode", "decode", *args, "--kv-heads", "1", "--min-run-time", "0.01", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "cache at context n (MiB)" in r.stdout and "cache exponent" in r.stdout
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    rows = [x for x in rows if x.get("seq_len")]
    assert {x["status"] for x in rows} == {"ok"} and {x["kv_heads"] for x in rows} == {1}
    assert all(x["causal"] and x["mode"] == "decode" for x in rows)
    rep = run_cli("report", str(out), "--out", str(tmp_path / "rep"))
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "rep" / "cache.png").exists()
    assert "Decoding cache at context n" in (tmp_path / "rep" / "report.md").read_text()
    for args, msg in (
        (["--kv-heads", "3"], "--kv-heads 3 must divide --heads 8"),
        (["--attn", "linformer"], "linformer cannot decode"),
        (["--kv-heads", "0"], "--kv-heads"),
    ):
        bad = run_cli("bench", "--mode", "decode", "--seq-lens", "16", *args)
        assert bad.returncode == 2 and msg in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


@pytest.fixture
def temp_registry():
    from effattn import registry

    registry._ensure_loaded()
    saved = dict(registry._REGISTRY)
    yield registry
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


def test_a_plugin_whose_step_misbehaves_is_an_error_row_and_the_sweep_goes_on(temp_registry):
    """A step that returns NaN, the wrong shape or raises, and a cache that cannot be built: each
    is that point's `error` with the reason; the other points of the group are measured."""
    from effattn.attention.full import FullAttention
    from effattn.bench.group import measure_group
    from effattn.bench.spec import SweepSpec
    from effattn.spec import Variant

    class NanStep(FullAttention):
        def step(self, cache, q, k, v):
            return super().step(cache, q, k, v) * float("nan")

    class WrongShape(FullAttention):
        def step(self, cache, q, k, v):
            return super().step(cache, q, k, v)[:, :1]

    class Raises(FullAttention):
        def step(self, cache, q, k, v):
            raise RuntimeError("boom in step")

    class NoCache(FullAttention):
        def new_cache(self, *a, **kw):
            raise ValueError("no cache for you")

    for name, cls in (("t_nan", NanStep), ("t_shape", WrongShape), ("t_raise", Raises), ("t_nocache", NoCache)):
        temp_registry.register_attention(name)(cls)
    vs = [Variant(n) for n in ("t_nan", "t_shape", "t_raise", "t_nocache", "full")]
    spec = SweepSpec(seq_lens=[32], variants=vs, mode="decode", causal=True, heads=2, head_dim=8, min_run_time_s=0.01)
    rows = {r["label"]: r for r in measure_group(spec, vs, 32)}
    assert rows["full"]["status"] == "ok"
    assert rows["t_nan"]["status"] == "error" and "not finite" in rows["t_nan"]["reason"]
    assert rows["t_shape"]["status"] == "error" and "shape" in rows["t_shape"]["reason"]
    assert rows["t_raise"]["status"] == "error" and "boom in step" in rows["t_raise"]["reason"]
    assert rows["t_nocache"]["status"] == "error" and "no cache for you" in rows["t_nocache"]["reason"]
