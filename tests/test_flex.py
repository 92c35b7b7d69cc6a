"""The FlexAttention backend: same pattern as the chunked engine, CPU forward only."""

import pytest
import torch

import effattn
from effattn.kernels.flex import flex_available

pytestmark = pytest.mark.skipif(flex_available() is not None, reason=str(flex_available()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,opts",
    [
        ("sliding_window", dict(window=16, global_tokens=2)),
        ("bigbird", dict(block_size=16, num_random_blocks=2)),
        ("sparse", dict(pattern="strided", stride=16)),
        ("sparse", dict(pattern="fixed", stride=16, summary=4)),
    ],
    ids=["sliding_window", "bigbird", "strided", "fixed"],
)
def test_flex_matches_chunked_in_inference(name, opts):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 200, 16, generator=g) for _ in range(3))
    kpm = torch.zeros(2, 200, dtype=torch.bool)
    kpm[0, 150:] = True
    kpm[1, :] = True  # a fully padded row must give zeros
    flex = effattn.create_attention(name, backend="flex", **opts)
    chunked = effattn.create_attention(name, backend="chunked", **opts)
    with torch.no_grad():
        for causal, pad in ((False, None), (True, None), (False, kpm)):
            a = flex(q, k, v, causal=causal, key_padding_mask=pad)
            b = chunked(q, k, v, causal=causal, key_padding_mask=pad)
            assert flex.last_backend == "flex"
            err = ((a - b).norm() / b.norm().clamp_min(1e-30)).item() if b.norm() > 0 else a.abs().max().item()
            assert err < 1e-5, (causal, pad is not None, err)


def test_flex_refuses_backward_on_cpu():
    attn = effattn.create_attention("sliding_window", window=4, backend="flex")
    q = torch.randn(1, 1, 32, 8, requires_grad=True)
    with pytest.raises(effattn.UnsupportedError, match="no backward on CPU"):
        attn(q, q, q)


def test_auto_picks_chunked_on_cpu():
    attn = effattn.create_attention("sliding_window", window=4)
    attn(*(torch.randn(1, 1, 32, 8),) * 3)
    assert attn.last_backend == "chunked-flash"  # (the CPU flash kernel, without autograd's views)


@pytest.mark.slow
def test_past_the_recompile_limit_flex_fails_instead_of_running_dense(monkeypatch):
    """Dynamo's own fallback at its recompile limit runs flex_attention eagerly, which builds every
    n x n score: a 'flex' row would then measure dense work. It must fail, saying why."""
    import effattn.kernels.flex as flex_mod

    monkeypatch.setattr(flex_mod, "RECOMPILE_LIMIT", 1)
    attn = effattn.create_attention("sliding_window", window=8, backend="flex")
    with torch.no_grad(), pytest.raises(effattn.UnsupportedError, match="compiled 1 times"):
        for n in (136, 152):  # two shapes no other test uses: at most one compiles under the limit
            attn(*(torch.randn(1, 1, n, 8),) * 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float64_on_cuda_takes_the_chunked_path_and_flex_refuses_it():
    """FlexAttention's Triton kernels fail to compile for float64 (an assertion inside tl.dot)."""
    q = torch.randn(1, 2, 64, 16, device="cuda", dtype=torch.float64)
    attn = effattn.create_attention("sliding_window", window=4)
    attn(q, q, q)
    assert attn.last_backend == "chunked-sdpa"
    with pytest.raises(effattn.UnsupportedError, match="float64"):
        effattn.create_attention("sliding_window", window=4, backend="flex")(q, q, q)


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True])
def test_a_large_block_mask_is_built_without_the_n_by_n_mask(monkeypatch, compiled):
    """Built eagerly, create_block_mask evaluates all n x n pairs at once (4 GiB at 16k); past
    COMPILED_MASK_PAIRS it is built compiled. The first call's measured peak says which."""
    import effattn.kernels.flex as flex_mod
    from effattn.bench.measure import profile_memory

    monkeypatch.setattr(flex_mod, "COMPILED_MASK_PAIRS", 1 if compiled else 1 << 62)
    n = 1040  # a length no other test uses, so its block mask is built here
    attn = effattn.create_attention("sliding_window", window=16, backend="flex")
    q = torch.randn(1, 1, n, 16)
    with torch.no_grad():
        _, peak, _ = profile_memory(lambda: attn(q, q, q), "cpu")
    assert (peak < n * n) if compiled else (peak >= n * n), peak
