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
