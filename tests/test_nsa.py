"""NSA (Yuan et al. 2025): the plugin against its definition computed densely in float64
(`nsa_reference`), the block selection against a plain per-query loop, each branch against an
independent implementation (fla's naive NSA reference for the compressed and selected branches and
the selection rule; effattn's `sliding_window` for the window), and the limits the definition
implies."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from effattn import create_attention
from effattn.attention.nsa import branches, nsa_reference, select_blocks
from effattn.errors import OptionError, UnsupportedError

SMALL = dict(block_size=8, block_stride=4, select_size=8, top_n=3, window=6, local_blocks=1)
OPTION_SETS = [
    SMALL,
    dict(block_size=6, block_stride=4, select_size=10, top_n=3, window=5, local_blocks=2, chunk=7),
    dict(block_size=5, block_stride=5, select_size=4, top_n=2, window=0, local_blocks=0, seed=3),
]


def _qkv(n, B=2, H=2, D=16, seed=0, K=None):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, n, D), (B, K or H, n, D), (B, K or H, n, D)]
    return tuple(torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes)


def _grads(out, xs):
    g = torch.autograd.grad(out.square().sum(), xs, allow_unused=True)
    return [torch.zeros_like(x) if a is None else a for a, x in zip(g, xs)]  # n < l: no compressed block


@pytest.mark.parametrize("opts", OPTION_SETS, ids=["small", "overlap", "no-window"])
@pytest.mark.parametrize("n", [1, 9, 40, 77])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_nsa_equals_its_dense_definition_forward_and_backward(opts, n, causal, padded):
    q, k, v = _qkv(n)
    kpm = None
    if padded:
        kpm = torch.zeros(2, n, dtype=torch.bool)
        kpm[1, n // 2 :] = True
        kpm[0, 3:9] = True  # padding inside the sequence: drops compressed blocks, empties window rows
    attn = create_attention("nsa", **opts).double()
    out = attn(q, k, v, causal=causal, key_padding_mask=kpm)
    ref = nsa_reference(attn, q, k, v, causal, kpm)
    assert (out - ref).abs().max() <= 1e-12
    with torch.no_grad():  # the selected branch's other path: merged online, in place
        assert (attn(q, k, v, causal=causal, key_padding_mask=kpm) - ref).abs().max() <= 1e-12
    xs = (q, k, v, *attn.parameters())  # gradients reach the compression and gate weights too
    for a, b in zip(_grads(out, xs), _grads(ref, xs)):
        assert (a - b).abs().max() <= 1e-11


def test_nsa_at_a_longer_length_with_gqa_and_padding():
    """n = 256 with sixteen key blocks, four kept: the selection really chooses; two query heads per
    key/value head; a batch row padded at the end."""
    q, k, v = _qkv(256, H=4, K=2)
    kpm = torch.zeros(2, 256, dtype=torch.bool)
    kpm[1, 200:] = True
    attn = create_attention("nsa", block_size=16, block_stride=8, select_size=16, top_n=4, window=32).double()
    for causal in (True, False):
        out = attn(q, k, v, causal=causal, key_padding_mask=kpm)
        ref = nsa_reference(attn, q, k, v, causal, kpm)
        assert (out - ref).abs().max() <= 1e-12
        xs = (q, k, v, *attn.parameters())
        for a, b in zip(_grads(out, xs), _grads(ref, xs)):
            assert (a - b).abs().max() <= 1e-11


def _selection_loop(attn, q, k, causal, kpm=None):
    """The selection rule written out for one query at a time, in Python, from the paper's
    definitions: compressed keys by a loop, p_cmp by softmax over the visible blocks, p_slc by
    token overlap, then forced blocks, then the best-scored candidates (ties: lower index)."""
    bl, d, ls, top_n = attn.block_size, attn.block_stride, attn.select_size, attn.top_n
    n, D = q.shape[0], q.shape[1]
    w = attn.w_k.detach().double()
    starts = list(range(0, n - bl + 1, d)) if n >= bl else []
    kc = [sum(w[p] * k[s + p] for p in range(bl)) for s in starts]
    m_s = math.ceil(n / ls)
    unpadded = [True] * n if kpm is None else [not bool(x) for x in kpm]
    out = []
    for t in range(n):
        vis = [i for i, s in enumerate(starts) if (not causal or s + bl - 1 <= t) and all(unpadded[s : s + bl])]
        logits = {i: float(q[t] @ kc[i]) / math.sqrt(D) for i in vis}
        top = max(logits.values(), default=0.0)
        z = sum(math.exp(x - top) for x in logits.values())
        p = {i: math.exp(x - top) / z for i, x in logits.items()}
        score = {}
        for J in range(m_s):
            score[J] = sum(p[i] * max(0, min(starts[i] + bl, (J + 1) * ls) - max(starts[i], J * ls)) for i in vis)
        own = t // ls
        forced = {0} | {own - r for r in range(attn.local_blocks) if own - r >= 0}
        cands = [J for J in range(m_s) if J not in forced and (not causal or J * ls <= t)
                 and any(unpadded[J * ls : (J + 1) * ls])]  # fmt: skip
        best = sorted(cands, key=lambda J: (-score[J], J))[: top_n - len(forced)]
        out.append(forced | set(best))
    return out


@pytest.mark.parametrize(
    "opts",
    [
        SMALL,
        dict(block_size=6, block_stride=4, select_size=10, top_n=4, local_blocks=2),
        dict(block_size=7, block_stride=3, select_size=5, top_n=2, local_blocks=0),
    ],  # fmt: skip
    ids=["small", "overlap", "no-local"],
)
def test_the_selection_keeps_what_a_per_query_loop_keeps(opts):
    q, k, _ = (t.detach() for t in _qkv(61, B=2, H=1))
    kpm = torch.zeros(2, 61, dtype=torch.bool)
    kpm[1, 20:35] = True
    attn = create_attention("nsa", **opts)
    for causal in (True, False):
        for pad in (None, kpm):
            idx = select_blocks(attn, q, k, causal, pad)
            for b in range(2):
                want = _selection_loop(attn, q[b, 0], k[b, 0], causal, None if pad is None else pad[b])
                got = [set(row.tolist()) - {-1} for row in idx[b, 0]]
                assert got == want, (causal, pad is not None, b)


def test_the_window_branch_is_sliding_window_of_w_minus_1():
    """NSA's window is the last w keys (t - w < j <= t; without causal |t - j| < w), which is
    effattn's `sliding_window` (|i - j| <= w') with w' = w - 1."""
    q, k, v = (t.detach() for t in _qkv(53))
    kpm = torch.zeros(2, 53, dtype=torch.bool)
    kpm[1, 30:] = True
    attn = create_attention("nsa", **{**SMALL, "window": 7})
    for causal in (True, False):
        _, _, o_swa, _ = branches(attn, q, k, v, causal, kpm)
        want = create_attention("sliding_window", window=6)(q, k, v, causal=causal, key_padding_mask=kpm)
        assert (o_swa - want).abs().max() <= 1e-12


def test_limits_every_block_selected_and_a_wide_window_are_full_attention():
    q, k, v = (t.detach() for t in _qkv(40))
    attn = create_attention("nsa", block_size=8, block_stride=8, select_size=8, top_n=5, window=40)
    full = create_attention("full")
    for causal in (True, False):
        o_cmp, o_slc, o_swa, _ = branches(attn, q, k, v, causal)
        want = full(q, k, v, causal=causal)
        assert (o_slc - want).abs().max() <= 1e-12 and (o_swa - want).abs().max() <= 1e-12
    # compressed branch with blocks of one token and mean pooling: full attention too (causal)
    one = create_attention("nsa", block_size=1, block_stride=1, select_size=8, top_n=1, local_blocks=0)
    o_cmp, _, _, _ = branches(one, q, k, v, True)
    assert (o_cmp - full(q, k, v, causal=True)).abs().max() <= 1e-12


def test_chunking_and_grouped_heads_change_nothing():
    q, k, v = (t.detach() for t in _qkv(45, H=4, K=2))
    a = create_attention("nsa", **SMALL)
    b = create_attention("nsa", **SMALL, chunk=1)
    for causal in (True, False):
        out = a(q, k, v, causal=causal)
        assert (out - b(q, k, v, causal=causal)).abs().max() <= 1e-12
        rep = a(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), causal=causal)
        assert (out - rep).abs().max() <= 1e-12
        assert (out - nsa_reference(a, q, k, v, causal)).abs().max() <= 1e-12


def test_gates_and_init_are_documented_and_seeded():
    a, b, c = (create_attention("nsa", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.gate_weight, b.gate_weight) and not torch.equal(a.gate_weight, c.gate_weight)
    assert torch.allclose(a.w_k, torch.full((32,), 1 / 32)) and torch.allclose(a.w_v, a.w_k)  # mean pooling
    assert torch.allclose(torch.sigmoid(a.gate_bias), torch.full((3,), 1 / 3))
    assert (a.block_size, a.block_stride, a.select_size, a.top_n, a.window) == (32, 16, 64, 16, 512)  # the paper's


def test_nsa_refusals_and_bad_options_are_clear_errors():
    for opts, msg in (
        ({"block_size": 0}, "block_size"),
        ({"block_stride": 9, "block_size": 8}, "block_stride must be in \\[1, 8\\]"),
        ({"select_size": 0}, "select_size"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": 2, "local_blocks": 2}, "top_n must be at least local_blocks \\+ 1 = 3"),
        ({"window": -1}, "window"),
        ({"window": 1.5}, "window"),
        ({"seed": "0"}, "seed"),
    ):
        with pytest.raises(OptionError, match=msg):
            create_attention("nsa", **opts)
    attn = create_attention("nsa", max_head_dim=8)
    q = torch.randn(1, 1, 5, 16)
    with pytest.raises(UnsupportedError, match="head_dim 16 exceeds max_head_dim 8"):
        attn(q, q, q)
    with pytest.raises(UnsupportedError, match="cross-attention"):
        create_attention("nsa")(q, q[:, :, :3], q[:, :, :3])


# ----------------------------------------------------------------------------- fla's naive reference
def _fla_naive():
    """fla's naive NSA (fla/ops/nsa/naive.py, plain PyTorch): imported when Triton is there, else
    loaded by path with its variable-length helpers stubbed (effattn.fla_reference)."""
    if importlib.util.find_spec("triton") is not None and importlib.util.find_spec("fla") is not None:
        from fla.ops.nsa import naive

        return naive
    from effattn import fla_reference

    mod = fla_reference.load("nsa/naive")
    if mod is None:
        pytest.skip("fla-core with fla/ops/nsa/naive.py is not installed: pip install 'effattn[peers]'")
    return mod


def _mean_blocks(x, bs):
    """(B, H, n, D) -> (B, H, ceil(n / bs), D): the mean of each block of bs tokens (the last one
    partial), as fla's mean_pooling."""
    n = x.shape[2]
    return torch.stack([x[:, :, s : s + bs].mean(2) for s in range(0, n, bs)], 2)


@pytest.mark.parametrize("n", [16, 45, 77])
def test_against_fla_naive_nsa(n):
    """With l = d = l' (fla compresses non-overlapping blocks of its selection block size, by mean
    pooling, our initial phi) and the paper's forced blocks (first, own, previous: local_blocks=2):
    our selection is fla's `naive_nsa_topk`, our compressed branch is `naive_nsa_compression`, our
    selected branch is `naive_nsa_selection` given our blocks, and the whole output is the gated sum
    of those two and `sliding_window` (fla's own window branch needs flash-attn on CUDA)."""
    naive = _fla_naive()
    bs, top_n, w = 8, 4, 6
    q, k, v = (t.detach() for t in _qkv(n, B=2, H=2))
    attn = create_attention("nsa", block_size=bs, block_stride=bs, select_size=bs, top_n=top_n, window=w,
                            local_blocks=2).double()  # fmt: skip
    o_cmp, o_slc, o_swa, idx = branches(attn, q, k, v, True)

    def bthd(x):
        return x.transpose(1, 2).contiguous()

    kc, vc = _mean_blocks(k, bs), _mean_blocks(v, bs)
    scale = 16**-0.5
    fla_idx = naive.naive_nsa_topk(bthd(q), bthd(kc), top_n, bs, scale)  # (B, n, H, S)
    ours = [[set(r.tolist()) - {-1} for r in idx[b, h]] for b in range(2) for h in range(2)]
    theirs = [[set(fla_idx[b, t, h].tolist()) - {-1} for t in range(n)] for b in range(2) for h in range(2)]
    assert ours == theirs
    fla_cmp, _ = naive.naive_nsa_compression(bthd(q), bthd(kc), bthd(vc), bs, scale)
    # fla's naive branches compute in float32 (they cast q, k, v with .float())
    assert (bthd(fla_cmp) - o_cmp).abs().max() <= 1e-5
    fla_slc = naive.naive_nsa_selection(bthd(q), bthd(k), bthd(v), bthd(idx), bs, scale)
    assert (bthd(fla_slc).double() - o_slc).abs().max() <= 1e-5
    g = torch.sigmoid(q @ attn.gate_weight[:16] + attn.gate_bias)
    swa = create_attention("sliding_window", window=w - 1)(q, k, v, causal=True)
    want = g[..., 0:1] * bthd(fla_cmp) + g[..., 1:2] * bthd(fla_slc).double() + g[..., 2:3] * swa
    assert (attn(q, k, v, causal=True) - want).abs().max() <= 1e-5
