"""MoBA (Lu et al. 2025): the plugin against its definition computed densely in float64, the gate
against a plain per-query loop, and the two limits the definition implies."""

from __future__ import annotations

import pytest
import torch

from effattn import create_attention
from effattn.attention.moba import moba_reference, select_blocks


def _qkv(n, B=2, H=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, n, D, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))


@pytest.mark.parametrize("n", [1, 9, 40, 77])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_moba_equals_its_dense_definition_forward_and_backward(n, causal, padded):
    q, k, v = _qkv(n)
    kpm = None
    if padded:
        kpm = torch.zeros(2, n, dtype=torch.bool)
        kpm[1, n // 2 :] = True
    attn = create_attention("moba", block_size=8, top_k=3)
    out = attn(q, k, v, causal=causal, key_padding_mask=kpm)
    ref = moba_reference(q, k, v, 8, 3, causal, kpm)
    assert torch.allclose(out, ref, atol=1e-10)
    g = torch.autograd.grad(out.square().sum(), (q, k, v))
    gr = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g, gr))


@pytest.mark.dense_shortcut
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("top_k", [1, 2])
def test_moba_short_calls_take_the_dense_path_and_equal_the_definition(causal, top_k):
    """A call of a training task's size runs as one masked SDPA call; same definition, same
    gradients, and a row whose every kept key is padding is zeros, as on the loop path."""
    q, k, v = _qkv(40)
    kpm = torch.zeros(2, 40, dtype=torch.bool)
    kpm[1, 5:] = True  # top_k = 1: rows 8.. of batch 1 keep only their own block, all padding
    attn = create_attention("moba", block_size=8, top_k=top_k)
    out = attn(q, k, v, causal=causal, key_padding_mask=kpm)
    assert attn.last_backend == "dense-masked"
    ref = moba_reference(q, k, v, 8, top_k, causal, kpm)
    assert torch.allclose(out, ref, atol=1e-10)
    assert (out[1, :, 8:].abs().sum() == 0) == (top_k == 1)
    g = torch.autograd.grad(out.square().sum(), (q, k, v))
    gr = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g, gr))
    big = torch.zeros(1, 1, 2049, 8)  # B·H·n² > 2^22: the block loop
    attn(big, big, big)
    assert attn.last_backend == "block-gather"


@pytest.mark.dense_shortcut
def test_moba_dense_and_loop_paths_meet_at_the_boundary():
    """B·H·n² = 2^22 is the last call on the dense path, one more row and the loop takes over; both
    equal the definition (causal)."""
    from effattn.attention import moba

    for n, path in ((1024, "dense-masked"), (1025, "block-gather")):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 4, n, 8, generator=g) for _ in range(3))
        attn = create_attention("moba", block_size=128, top_k=2)
        out = attn(q, k, v, causal=True)
        assert attn.last_backend == path and 4 * 1024 * 1024 == moba.DENSE_MAX_ELEMENTS
        assert torch.allclose(out, moba_reference(q, k, v, 128, 2, True).float(), atol=1e-5)


def test_the_gate_keeps_what_a_per_query_loop_keeps():
    """Own block always; then the top_k - 1 others by q . mean(block keys), causal: only blocks
    that start at or before the query."""
    q, k, _ = (t.detach() for t in _qkv(45, B=1, H=1))
    b, top_k = 8, 3
    for causal in (False, True):
        kept = select_blocks(q, k, b, top_k, causal)[0, 0]
        m = kept.shape[-1]
        means = [k[0, 0, J * b : (J + 1) * b].mean(0) for J in range(m)]
        for i in range(45):
            own = i // b
            cands = [J for J in range(m) if J != own and (not causal or J * b <= i)]
            scores = {J: float(q[0, 0, i] @ means[J]) for J in cands}
            best = sorted(cands, key=lambda J: -scores[J])[: top_k - 1]
            want = {own, *best}
            assert set(kept[i].nonzero().flatten().tolist()) == want, (i, causal)


def test_moba_limits_full_attention_and_its_own_block():
    q, k, v = (t.detach() for t in _qkv(40))
    full = create_attention("full")
    for causal in (False, True):
        every = create_attention("moba", block_size=8, top_k=5)(q, k, v, causal=causal)  # 5 blocks: all kept
        assert torch.allclose(every, full(q, k, v, causal=causal), atol=1e-10)
    own = create_attention("moba", block_size=8, top_k=1)(q, k, v)
    i = torch.arange(40)
    same = (i[:, None] // 8) == (i[None, :] // 8)
    ref = torch.softmax((q @ k.transpose(-1, -2) / 4).masked_fill(~same, float("-inf")), -1) @ v
    assert torch.allclose(own, ref, atol=1e-10)


def test_moba_bad_options_are_clear_errors():
    for opts, msg in (({"block_size": 0}, "block_size"), ({"top_k": 0}, "top_k"), ({"top_k": "3"}, "top_k")):
        with pytest.raises(Exception, match=msg):
            create_attention("moba", **opts)
