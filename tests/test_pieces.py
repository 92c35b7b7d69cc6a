"""Patterns cut into pieces merged by log-sum-exp (`effattn.kernels.merge`): the pieces
partition the pattern, and the merged result equals float64 softmax attention over the pattern,
forward and gradients, on the CPU flash kernel's path and on the explicit-score path."""

from __future__ import annotations

import pytest
import torch

from effattn.attention import base
from effattn.kernels import chunked, merge
from effattn.kernels.masks import combine_masks, dense_attention
from effattn.registry import create_attention

PIECED = {
    "strided": ("sparse", {"stride": 8}),
    "strided-3": ("sparse", {"stride": 3}),
    "fixed": ("sparse", {"pattern": "fixed", "stride": 8, "summary": 2}),
    "fixed-all-summary": ("sparse", {"pattern": "fixed", "stride": 4, "summary": 4}),
    "fixed-odd": ("sparse", {"pattern": "fixed", "stride": 5, "summary": 2}),
    "bigbird": ("bigbird", {"block_size": 4, "num_random_blocks": 2}),  # one plan: still a partition
}


def _build(key):
    name, opts = PIECED[key]
    attn = create_attention(name, **opts)
    attn.summary_rows = 16  # several row chunks per piece at test lengths
    return attn


def _piece_masks(plan: chunked.Plan, n_q: int, n_k: int) -> torch.Tensor:
    """The (n_q, n_k) pairs a plan computes, from its groups (mask and rows without keys)."""
    out = torch.zeros(n_q, n_k, dtype=torch.int64)
    for g in plan.groups:
        G, c = g.rows.shape
        m = torch.ones(c, g.keys.shape[1], dtype=torch.bool) if g.mask is None else g.mask
        if g.row_keep is not None:
            m = m & g.row_keep
        for i in range(G):
            out[g.rows[i][:, None], g.keys[i][None, :]] += m.long()
    return out


@pytest.mark.parametrize("key", list(PIECED))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(1, 1), (7, 7), (40, 40), (67, 67), (30, 51), (51, 30)])
def test_pieces_partition_the_pattern(key, causal, n_q, n_k, training):
    """Every attended pair lies in exactly one piece, and no piece computes a pair outside the
    pattern: the merge adds each pair once."""
    attn = _build(key)
    if not getattr(attn, "supports_cross", True) and n_q != n_k:
        pytest.skip(f"{key} is defined on one sequence")
    attn.band_chunk, attn.band_chunk_training = 4, 16  # several band chunks, two layouts
    plans = attn._piece_plans(n_q, n_k, causal, training)
    total = sum(_piece_masks(p, n_q, n_k) for p in plans)
    want = attn.dense_mask(n_q, n_k, causal).long()
    assert torch.equal(total, want)
    assert sum(p.pairs for p in plans) == int(want.sum()) == attn.nnz(n_q, n_k, causal)


def _qkv(B, H, Kh, n_q, n_k, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
    return mk(B, H, n_q, D), mk(B, Kh, n_k, D), mk(B, Kh, n_k, D)


@pytest.mark.parametrize("path", ["flash", "explicit"])
@pytest.mark.parametrize("key", ["strided", "fixed", "fixed-odd"])
@pytest.mark.parametrize(
    "n_q,n_k,causal,pad,Kh",
    [(67, 67, False, 0, 4), (67, 67, True, 5, 4), (40, 40, False, 3, 1), (30, 51, False, 4, 2), (51, 30, True, 0, 2)],
)
def test_merged_equals_float64_softmax(monkeypatch, path, key, n_q, n_k, causal, pad, Kh):
    if path == "explicit":
        monkeypatch.setattr(merge, "kernel_ok", lambda q: False)
    elif not merge.kernel_ok(torch.zeros(1)):
        pytest.skip("this torch build has no CPU flash kernel")
    attn = _build(key)
    if not getattr(attn, "supports_cross", True) and n_q != n_k:
        pytest.skip(f"{key} is defined on one sequence")
    B, H, D = 2, 4, 8
    q, k, v = _qkv(B, H, Kh, n_q, n_k, D)
    kpm = None
    if pad:
        kpm = torch.zeros(B, n_k, dtype=torch.bool)
        kpm[0, -pad:] = True
        kpm[1, : min(pad + 20, n_k)] = True  # early rows of a causal call lose every key
    out = attn(q, k, v, causal=causal, key_padding_mask=kpm)
    assert "pieces" in attn.last_backend  # the merge ran
    mask = combine_masks(attn.dense_mask(n_q, n_k, causal), kpm)
    rep = H // Kh
    ref = torch.nan_to_num(dense_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), mask))
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_matches_float64(dtype):
    """Float32 and bfloat16 go through the same merge (the log-sum-exp kept in float32)."""
    attn = _build("strided")
    q, k, v = (t.detach() for t in _qkv(1, 2, 2, 100, 100, 16))
    ref = attn(q, k, v)
    got = attn(q.to(dtype), k.to(dtype), v.to(dtype)).double()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (got - ref).abs().max() < tol


def test_rows_without_any_key_are_zero_with_zero_gradient():
    """Cross lengths where late queries lie past every key of the band, all keys padded for one
    batch element: zeros, and no gradient flows from those rows."""
    attn = _build("strided")
    q, k, v = _qkv(2, 2, 2, 40, 10, 8)
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[1] = True
    out = attn(q, k, v, causal=True, key_padding_mask=kpm)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out[1].sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q.grad)) and torch.equal(k.grad, torch.zeros_like(k.grad))


@pytest.mark.dense_shortcut
def test_dense_shortcut_engages_only_where_chunks_cover_most_pairs():
    """Short sequences (a window of 64 at n = 128) run as one masked call, equal to the chunk path
    in float64, forward and gradients; long ones (n = 4096) keep the chunks."""
    win = create_attention("sliding_window", window=64)
    q, k, v = _qkv(2, 4, 4, 128, 128, 8)
    kpm = torch.zeros(2, 128, dtype=torch.bool)
    kpm[1, :100] = True
    out = win(q, k, v, causal=True, key_padding_mask=kpm)
    assert "dense" in win.last_backend
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    base.DENSE_ABOVE, saved = None, base.DENSE_ABOVE
    try:
        ref = win(q, k, v, causal=True, key_padding_mask=kpm)
        assert win.last_backend.startswith("chunked-")
        want = torch.autograd.grad(ref.square().sum(), (q, k, v))
    finally:
        base.DENSE_ABOVE = saved
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    long = torch.zeros(1, 1, 4096, 8)
    win(long, long, long)
    assert win.last_backend == "chunked-flash"
