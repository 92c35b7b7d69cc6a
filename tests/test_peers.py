"""The implementations users pick today, as plugins: each through the conformance suite, checked
against effattn's own variant of the same definition, and each quirk that the plugin adapts shown
to be real in the raw library (so that the adaptation cannot outlive its reason unnoticed)."""

from __future__ import annotations

import builtins

import pytest
import torch

from effattn import create_attention
from effattn.registry import get_entry
from effattn.testing import run_checks

PEERS = {
    "local_attention": ({"window": 16}, "local_attention"),
    "hf_longformer": ({"window": 16}, "transformers"),
    "hf_bigbird": ({"block_size": 8, "num_random_blocks": 1}, "transformers"),
    "performer_pytorch": ({"num_features": 64}, "performer_pytorch"),
}


def _need(module: str):
    try:
        __import__(module)
    except Exception:  # noqa: BLE001 - any import failure: the peer is not installed here
        pytest.skip(f"{module} is not installed (pip install 'effattn[peers]')")


@pytest.mark.parametrize("name", list(PEERS))
def test_each_peer_passes_the_checks_it_declares(name):
    opts, module = PEERS[name]
    _need(module)
    res = run_checks(name, **opts)
    failed = [f"{r.name}: {r.detail}" for r in res if r.status == "failed"]
    assert not failed, failed
    if get_entry(name).facts.exact:
        assert {r.name: r.status for r in res}["exact_vs_reference"] == "passed"


def test_a_missing_peer_is_unavailable_with_the_install_hint(monkeypatch):
    real = builtins.__import__

    def no_peers(name, *a, **kw):
        if name.split(".")[0] in ("local_attention", "transformers", "performer_pytorch"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_peers)
    for name in PEERS:
        why = get_entry(name).availability("cpu")
        assert why and why.startswith("unavailable:") and "pip install 'effattn[peers]'" in why, why


def _qkv(n, B=2, H=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, n, D, generator=g) for _ in range(3))


def test_local_attention_equals_sliding_window_and_its_raw_quirks_are_real():
    _need("local_attention")
    from local_attention import LocalAttention

    q, k, v = _qkv(50)  # 50 is no multiple of the window (16): the library pads with zero keys
    ours = create_attention("sliding_window", window=16)
    peer = create_attention("local_attention", window=16)
    pad = torch.zeros(2, 50, dtype=torch.bool)
    pad[1, 20:] = True
    for causal in (False, True):
        for kpm in (None, pad):
            want = ours(q, k, v, causal=causal, key_padding_mask=kpm)
            got = peer(q, k, v, causal=causal, key_padding_mask=kpm)
            assert torch.allclose(got, want, atol=1e-5), (causal, kpm is not None)
    raw = LocalAttention(window_size=16, causal=False, look_backward=1, look_forward=1, exact_windowsize=True,
                         autopad=True, dim=None, use_rotary_pos_emb=False)  # fmt: skip
    # 1. without a mask it attends its own zero padding: the last rows differ from the band
    unmasked = raw(q, k, v)
    assert not torch.allclose(unmasked[:, :, -5:], ours(q, k, v)[:, :, -5:], atol=1e-3)
    # 2. a row with no key left gets the mean of V, not zeros
    allpad = torch.zeros(2, 50, dtype=torch.bool)
    allpad[0] = True
    out = raw(q, k, v, mask=~allpad)
    assert out[0].abs().max() > 1e-3  # not zeros
    assert create_attention("local_attention", window=16)(q, k, v, key_padding_mask=allpad)[0].abs().max() == 0


def test_hf_longformer_equals_sliding_window_and_masks_tokens_not_keys():
    _need("transformers")
    q, k, v = _qkv(70)  # no multiple of 2w = 32: the plugin pads and masks the tail
    ours = create_attention("sliding_window", window=16)(q, k, v)
    peer = create_attention("hf_longformer", window=16)
    assert torch.allclose(peer(q, k, v), ours, atol=1e-5)
    # the plugin hands HF fresh tensors: HF's in-place q /= sqrt(d) must not reach the caller
    q0 = q.clone()
    peer(q, k, v)
    assert torch.equal(q, q0)
    with pytest.raises(Exception, match="does not support key_padding_mask"):
        peer(q, k, v, key_padding_mask=torch.zeros(2, 70, dtype=torch.bool))


def test_our_performer_equals_performer_pytorch_kernel_without_its_eps():
    """The same random matrix through performer-pytorch's softmax_kernel (eps = 0) and its
    linear_attention gives effattn's `performer` output (non-causal): an independent check of our
    FAVOR+ arithmetic. With its own eps (1e-4 on every feature) the two differ, as documented."""
    _need("performer_pytorch")
    from performer_pytorch.performer_pytorch import linear_attention, softmax_kernel

    q, k, v = (t.double() for t in _qkv(40, D=16))
    ours = create_attention("performer", num_features=32).double()
    w = ours.features(16).double()
    fq = softmax_kernel(q, projection_matrix=w, is_query=True, eps=0.0)
    fk = softmax_kernel(k, projection_matrix=w, is_query=False, eps=0.0)
    ref = linear_attention(fq, fk, v)
    got = ours(q, k, v)
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-8), float((got - ref).abs().max())


def test_performer_pytorch_causal_leaks_the_future_so_it_is_not_declared():
    _need("performer_pytorch")
    import contextlib
    import io

    from performer_pytorch import FastAttention

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        fast = FastAttention(dim_heads=16, nb_features=64, causal=True)
    q, k, v = _qkv(64, D=16)
    k2 = k.clone()
    k2[:, :, -1] *= 6.0  # only the last key changes: a causal output before it must not move
    a, b = fast(q, k, v), fast(q, k2, v)
    moved = float((a[:, :, :-1] - b[:, :, :-1]).norm() / a[:, :, :-1].norm())
    assert moved > 1e-4, moved
    assert not get_entry("performer_pytorch").facts.supports_causal


@pytest.mark.slow
def test_flex_named_mask_equals_the_named_plugin():
    """One shape (one compile, ~15 s on CPU): FlexAttention with the named mask gives what the
    chunked engine gives for the same pattern; a backward on CPU is refused, not run another way."""
    q, k, v = _qkv(96, B=1)
    for name, opts in (("sliding_window", {"window": 16}),):
        flex = create_attention("flex", mask=name, **opts)
        want = create_attention(name, **opts)(q, k, v)
        assert torch.allclose(flex(q, k, v), want, atol=1e-5)
        assert flex.last_backend == "flex"
    with pytest.raises(Exception, match="no backward on CPU"):
        flex(q.clone().requires_grad_(), k, v)
    with pytest.raises(Exception, match="backend is fixed"):
        create_attention("flex", mask="sliding_window", backend="chunked")
    with pytest.raises(Exception, match="mask"):
        create_attention("flex", mask="nope")


def _drawn_blocks(peer, q, k, v):
    """Run the plugin, recording the random blocks HF draws: (B, H, m - 2, r) block indices for
    query blocks 1 .. m - 2 (read where HF turns them into masks)."""
    mod = peer._module(q.shape[1], q.shape[3])  # the HF module the call will use
    real = mod._create_rand_mask_from_inputs
    seen = []

    def spy(from_blocked, to_blocked, rand_attn, *rest):
        seen.append(rand_attn.clone())
        return real(from_blocked, to_blocked, rand_attn, *rest)

    mod._create_rand_mask_from_inputs = spy
    try:
        out = peer(q, k, v)
    finally:
        del mod._create_rand_mask_from_inputs
    return out, seen[0]


def _bigbird_counts(rand, n: int, block: int):
    """(B, H, n, n) how many times HF's softmax counts key j for query i: the first and last query
    blocks every key once; a middle block i the blocks {0, i - 1, i, i + 1, m - 1} once each, plus
    one per random slot (a slot on one of those blocks counts its keys again)."""
    B, H, rows, _ = rand.shape
    m = rows + 2
    c = torch.zeros(B, H, m, m, dtype=torch.float64)
    c[:, :, 0] = c[:, :, -1] = 1
    for i in range(1, m - 1):
        c[:, :, i, sorted({0, i - 1, i, i + 1, m - 1})] = 1
    c[:, :, 1:-1].scatter_add_(-1, rand, torch.ones(rand.shape, dtype=torch.float64))
    return c.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :n, :n]


def _counted_softmax(q, k, v, counts):
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    w = counts * torch.exp(s - s.amax(-1, keepdim=True))
    return (w / w.sum(-1, keepdim=True)) @ v


@pytest.mark.parametrize(("n", "block", "r"), [(70, 8, 1), (150, 8, 2), (1024, 64, 3)])
def test_hf_bigbird_equals_a_softmax_over_the_blocks_hf_drew(n, block, r):
    """Forward and gradients in float64 against a softmax that counts each key as often as HF's
    gathers do: at n = 70 and 150 (padded to the block; HF's per-head plan) and at n = 1024, one of
    the paper's old plans, where a random slot can repeat a window or global block."""
    _need("transformers")
    import numpy as np

    q, k, v = (t.double().requires_grad_() for t in _qkv(n, B=2, H=2, D=8))
    peer = create_attention("hf_bigbird", block_size=block, num_random_blocks=r)
    before = np.random.get_state()[1].copy()
    out, rand = _drawn_blocks(peer, q, k, v)
    assert peer.last_backend == "hf-bigbird"
    assert np.array_equal(np.random.get_state()[1], before)  # HF reseeds numpy; the plugin restores it
    assert not torch.equal(rand[:, 0], rand[:, 1])  # one draw per head
    counts = _bigbird_counts(rand, n, block)
    want = _counted_softmax(q, k, v, counts)
    assert torch.allclose(out, want, atol=1e-10)
    g = torch.autograd.grad(out.square().sum(), (q, k, v))
    gw = torch.autograd.grad(want.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g, gw))
    repeats = bool((counts > 1).any())
    assert repeats == (n == 1024), "repeats only on the old plans (n = 1024, 3072, 4096)"
    out2, rand2 = _drawn_blocks(create_attention("hf_bigbird", block_size=block, num_random_blocks=r), q, k, v)
    assert torch.equal(rand2, rand) and torch.equal(out2, out)  # the same seed, the same blocks
    other = _drawn_blocks(create_attention("hf_bigbird", block_size=block, num_random_blocks=r, seed=1), q, k, v)[1]
    assert not torch.equal(other, rand)


def test_hf_bigbird_long_plans_put_random_blocks_at_the_start_and_short_inputs_run_full():
    """Above 2r + 5 blocks (and off the old plans) HF draws every row's random blocks from the first
    2r + 5 blocks; at or below it, BigBirdModel uses full attention and so does the plugin."""
    _need("transformers")
    q, k, v = _qkv(2048, B=1, H=2, D=8)
    rand = _drawn_blocks(create_attention("hf_bigbird", block_size=64, num_random_blocks=3), q, k, v)[1]
    assert int(rand.max()) < 2 * 3 + 5 and rand.shape[2] == 2048 // 64 - 2
    q, k, v = _qkv(56, D=8)  # 7 blocks of 8, r = 1: 7 <= 2r + 5
    peer = create_attention("hf_bigbird", block_size=8, num_random_blocks=1)
    assert torch.allclose(peer(q, k, v), create_attention("full")(q, k, v), atol=1e-6)
    assert peer.last_backend.startswith("full")
    q, k, v = _qkv(80, D=8)
    q0 = q.clone()
    peer(q, k, v)
    assert torch.equal(q, q0) and peer.last_backend == "hf-bigbird"


def test_hf_bigbird_eval_mode_counts_block_0_again_for_every_random_slot():
    """The raw library in eval mode (`model.eval()`): every random slot is block 0, so block 0's
    keys enter each middle row's softmax 1 + r times. Shown here so that the plugin's choice of the
    training-mode draw cannot outlive its reason unnoticed."""
    _need("transformers")
    from transformers import BigBirdConfig
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel

    n, block, r, H, D = 96, 8, 2, 2, 8
    q, k, v = (t.double() for t in _qkv(n, B=1, H=H, D=D))
    cfg = BigBirdConfig(hidden_size=H * D, num_attention_heads=H, block_size=block, num_random_blocks=r,
                        attention_type="block_sparse", use_bias=False)  # fmt: skip
    raw = BigBirdBlockSparseAttention(cfg, seed=0).double().eval()
    eye = torch.eye(H * D, dtype=torch.float64)
    for lin in (raw.query, raw.key, raw.value):
        lin.weight.data.copy_(eye)  # hidden states = q, k or v: HF's own projections pass them through
    masks = BigBirdModel.create_masks_for_block_sparse_attn(torch.ones(1, n, dtype=torch.float64), block)
    blocked, band, from_mask, to_mask = masks

    def run(x_q, x_k, x_v):
        raw.query.forward = lambda _h: x_q.transpose(1, 2).reshape(1, n, H * D)
        raw.key.forward = lambda _h: x_k.transpose(1, 2).reshape(1, n, H * D)
        raw.value.forward = lambda _h: x_v.transpose(1, 2).reshape(1, n, H * D)
        out = raw(torch.zeros(1, n, H * D, dtype=torch.float64), band, from_mask, to_mask, blocked, blocked)[0]
        return out.view(1, n, H, D).transpose(1, 2)

    evald = run(q, k, v)
    zeros = torch.zeros(1, H, n // block - 2, r, dtype=torch.long)
    assert torch.allclose(evald, _counted_softmax(q, k, v, _bigbird_counts(zeros, n, block)), atol=1e-10)
    plain = _counted_softmax(q, k, v, _bigbird_counts(zeros, n, block).clamp(max=1))
    assert (evald - plain).abs().max() > 1e-3  # a real difference from counting each key once


def test_hf_bigbird_refuses_what_hf_cannot_compute_with_one_line():
    """Found by an adversarial review: each of these crashed deep inside HF (a reshape of its empty
    random gather at r = 0; a numpy broadcast in HF's draw at n = 3072/4096 with few candidate
    blocks; a reshape with a value head size unlike the query's). Each is now a clear refusal, and
    building HF's module leaves torch's generator alone (its discarded projections draw from it)."""
    _need("transformers")
    from effattn import OptionError, UnsupportedError

    with pytest.raises(OptionError, match="num_random_blocks"):
        create_attention("hf_bigbird", num_random_blocks=0)
    for n, block, r in ((3000, 256, 1), (4096, 64, 14)):
        q = torch.randn(1, 1, n, 8)
        with pytest.raises(UnsupportedError, match=f"cannot place {r} random blocks of {block}"):
            create_attention("hf_bigbird", block_size=block, num_random_blocks=r)(q, q, q)
    q, v = torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 8)
    for n in (100, 20):  # the sparse path and the full one refuse alike
        with pytest.raises(UnsupportedError, match="value head size"):
            create_attention("hf_bigbird", block_size=8, num_random_blocks=1)(q[:, :, :n], q[:, :, :n], v[:, :, :n])
    state = torch.get_rng_state().clone()
    create_attention("hf_bigbird", block_size=8, num_random_blocks=1)(q[:, :, :77], q[:, :, :77], q[:, :, :77])
    assert torch.equal(torch.get_rng_state(), state)


def test_hf_bigbird_additive_mask_lets_padding_in_at_extreme_scores():
    """The documented limit of padding through HF's additive -10000 (docs/peers.md): at n = 57 (one
    padded key in the last block), a row whose real scores are all -3600 is still right, and at
    -14400 the padded key takes the weight. Shown so the note in the docs stays true."""
    _need("transformers")
    v = torch.randn(1, 1, 57, 16, dtype=torch.float64)
    errs = []
    for c in (30.0, 60.0):  # every real score: -c^2 * 16 / sqrt(16) = -4 c^2
        q = torch.full((1, 1, 57, 16), c, dtype=torch.float64)
        out, rand = _drawn_blocks(create_attention("hf_bigbird", block_size=8, num_random_blocks=1), q, -q, v)
        errs.append(float((out - _counted_softmax(q, -q, v, _bigbird_counts(rand, 57, 8))).abs().max()))
    assert errs[0] < 1e-10 and errs[1] > 0.1, errs
