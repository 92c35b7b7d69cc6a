"""gla, deltanet and gated_deltanet (effattn/attention/gla.py, deltanet.py) against the definitions of
docs/semantics.md, written here as a float64 loop over tokens; against flash-linear-attention's
own reference recurrences where fla-core is installed; and their refusals."""

import math

import pytest
import torch
import torch.nn.functional as F

import effattn
from effattn import UnsupportedError, create_attention
from effattn.errors import OptionError

NAMES = ("gla_core", "deltanet_core", "gated_deltanet_core")


# ----------------------------------------------------------------------------- the definitions, token by token
def _l2(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def loop_reference(name, attn, q, k, v, key_padding_mask=None):
    """docs/semantics.md, one token at a time, per batch row and head (query head h reads key/value
    head h // (H / K)); the gates from the plugin's own parameters, so that gradients reach them."""
    B, H, n, D = q.shape
    K, Dv = k.shape[1], v.shape[-1]
    outs = [[None] * n for _ in range(B * H)]
    for b in range(B):
        for h in range(H):
            kh = h // (H // K)
            S = torch.zeros(D, Dv, dtype=q.dtype)
            for t in range(n):
                kt, vt, qt = k[b, kh, t], v[b, kh, t], q[b, h, t]
                padded = key_padding_mask is not None and bool(key_padding_mask[b, t])
                if name == "gla_core":
                    if not padded:
                        a = torch.exp(F.logsigmoid(kt @ attn.gate_weight + attn.gate_bias) / attn.tau)
                        S = a[:, None] * S + torch.outer(kt, vt)
                    o = S.T @ (qt / math.sqrt(D))
                else:
                    if not padded:
                        beta = torch.sigmoid(kt @ attn.beta_weight + attn.beta_bias)
                        alpha = 1.0
                        if name == "gated_deltanet_core":
                            alpha = torch.exp(
                                -torch.exp(attn.A_log) * F.softplus(kt @ attn.alpha_weight + attn.dt_bias)
                            )
                        kn = _l2(kt)
                        S = alpha * (S - beta * torch.outer(kn, kn @ S)) + beta * torch.outer(kn, vt)
                    o = S.T @ (_l2(qt) / math.sqrt(D))
                outs[b * H + h][t] = o
    return torch.stack([torch.stack(r) for r in outs]).reshape(B, H, n, Dv)


def _build(name, D, **opts):
    return create_attention(name, head_dim=D, **opts).double()  # the gate parameters too


def _qkv(B, H, K, n, D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, D, generator=g, dtype=torch.float64).to(dtype) for h in (H, K, K))


def _grads(out, inputs, seed=5):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * g).sum(), inputs, retain_graph=True)


def _max_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "chunk,n,padded,K",
    [(5, 23, False, 2), (64, 23, False, 1), (4, 17, True, 2), (8, 24, True, 1), (32, 45, True, 2), (48, 50, False, 1)],
)
def test_chunked_form_equals_the_token_loop_forward_and_gradients(name, chunk, n, padded, K):
    """float64: the chunked forward and its gradients (q, k, v and every gate parameter) equal the
    definition computed token by token - with chunks that do not divide n, one chunk longer than
    n, chunks of 32 and 48 (gla splits them into sub-chunks of 16), grouped-query heads, and padding
    (left and inside the sequence)."""
    B, H, D = 2, 4, 6
    attn = _build(name, D, chunk=chunk)
    q, k, v = (t.requires_grad_() for t in _qkv(B, H, K, n, D))
    kpm = None
    if padded:
        kpm = torch.zeros(B, n, dtype=torch.bool)
        kpm[0, :3] = True
        kpm[1, 5:9] = True
    params = [p for _, p in sorted(attn.named_parameters())]
    assert params, "the gate parameters exist once head_dim is known"
    out = attn(q, k, v, causal=True, key_padding_mask=kpm)
    ref = loop_reference(name, attn, q, k, v, kpm)
    assert _max_err(out, ref) < 1e-11
    for a, b in zip(_grads(out, [q, k, v, *params]), _grads(ref, [q, k, v, *params])):
        assert _max_err(a, b) < 1e-10
    if padded:  # a padded key changes nothing: the same as leaving it out
        gk, gv = torch.autograd.grad(out.sum(), (k, v))
        assert gk[0, :, :3].abs().max() == 0 and gv[1, :, 5:9].abs().max() == 0


@pytest.mark.parametrize("chunk", [32, 5])
def test_gla_in_slices_recomputed_in_the_backward_equals_the_token_loop(monkeypatch, chunk):
    """Long sequences take gla's chunks in slices, each recomputed in the backward (checkpointed):
    forced here from the first chunk on."""
    from effattn.attention import gla

    monkeypatch.setattr(gla, "SLICE_ELEMENTS", 1)
    attn = _build("gla_core", 6, chunk=chunk)
    q, k, v = (t.requires_grad_() for t in _qkv(2, 4, 2, 70, 6, seed=4))
    params = [p for _, p in sorted(attn.named_parameters())]
    out = attn(q, k, v, causal=True)
    ref = loop_reference("gla_core", attn, q, k, v)
    assert _max_err(out, ref) < 1e-11
    for a, b in zip(_grads(out, [q, k, v, *params]), _grads(ref, [q, k, v, *params])):
        assert _max_err(a, b) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_decoding_equals_the_token_loop(name):
    """prefill of a (padded) prompt, then one token at a time, in float64, against the loop."""
    B, H, K, n, D, p = 2, 4, 2, 30, 6, 11
    attn = _build(name, D, chunk=4)
    q, k, v = _qkv(B, H, K, n, D, seed=3)
    kpm = torch.zeros(B, n, dtype=torch.bool)
    kpm[1, :4] = True  # a left-padded prompt
    with torch.no_grad():
        ref = loop_reference(name, attn, q, k, v, kpm)
        cache = attn.new_cache(B, K, D, dtype=torch.float64)
        outs = [attn.prefill(cache, q[:, :, :p], k[:, :, :p], v[:, :, :p], key_padding_mask=kpm[:, :p])]
        for i in range(p, n):
            outs.append(attn.step(cache, q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1]))
    assert _max_err(torch.cat(outs, 2), ref) < 1e-12
    assert cache.length == n and cache.nbytes() == B * K * D * D * 8
    assert cache.last_read_bytes == B * K * D * D * 8


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_runs_in_float32_and_stays_finite(name):
    attn = create_attention(name, chunk=16)
    q, k, v = _qkv(1, 2, 2, 50, 16, dtype=torch.float32)
    want = attn(q, k, v, causal=True)
    for dt in (torch.bfloat16, torch.float16):
        out = attn(q.to(dt), k.to(dt), v.to(dt), causal=True)
        assert out.dtype == dt and torch.isfinite(out).all()
        assert _max_err(out.float(), want) < 0.05


def test_the_gates_are_reproducible_from_the_seed_and_made_at_the_first_call():
    q, k, v = _qkv(1, 2, 2, 9, 8, dtype=torch.float32)
    for name in NAMES:
        a, b = create_attention(name), create_attention(name)
        assert not list(a.parameters())  # head_dim unknown until the first call
        torch.manual_seed(123)  # the global generator plays no part
        oa = a(q, k, v, causal=True)
        assert list(a.parameters()) and torch.equal(oa, b(q, k, v, causal=True))
        c = create_attention(name, seed=1)
        assert not torch.equal(oa, c(q, k, v, causal=True))
        d = create_attention(name, head_dim=8)  # made when built: an optimizer built now sees them
        assert [n for n, _ in d.named_parameters()] == [n for n, _ in a.named_parameters()]
        assert torch.equal(oa, d(q, k, v, causal=True))
        with torch.inference_mode():  # a first call in inference mode still makes trainable parameters
            e = create_attention(name)
            e(q, k, v, causal=True)
        assert all(p.requires_grad and not p.is_inference() for p in e.parameters())


# ----------------------------------------------------------------------------- refusals: one clear error each
@pytest.mark.parametrize("name", NAMES)
def test_bad_options_and_calls_are_refused_in_one_line(name):
    for opts, needle in (
        (dict(chunk=0), "chunk"),
        (dict(seed=-1), "seed"),
        (dict(head_dim=-2), "head_dim"),
        (dict(chunk="8"), "chunk"),
    ):
        with pytest.raises(OptionError, match=needle):
            create_attention(name, **opts)
    if name == "gla_core":
        with pytest.raises(OptionError, match="tau"):
            create_attention(name, tau=0.0)
    attn = create_attention(name)
    q = torch.randn(1, 2, 7, 8)
    with pytest.raises(UnsupportedError, match="computes only the causal form") as e:
        attn(q, q, q)
    assert "\n" not in str(e.value)
    with pytest.raises(UnsupportedError, match="cross-attention"):
        attn(q, q[:, :, :5], q[:, :, :5], causal=True)
    attn(q, q, q, causal=True)
    with pytest.raises(ValueError, match="gate parameters are for head_dim 8 .its first call.; got head_dim 4"):
        attn(q[..., :4], q[..., :4], q[..., :4], causal=True)
    with pytest.raises(ValueError, match="head_dim 6 .its head_dim option.; got head_dim 8"):
        create_attention(name, head_dim=6)(q, q, q, causal=True)
    with pytest.raises(ValueError, match="incompatible shapes"):
        attn(q, q[..., :4], q, causal=True)
    cache = attn.new_cache(1, 2, 8)
    with pytest.raises(ValueError, match="one token"):
        attn.step(cache, q, q, q)
    with pytest.raises(ValueError, match="gate parameters are for head_dim 8"):
        attn.step(attn.new_cache(1, 2, 4), q[:, :, :1, :4], q[:, :, :1, :4], q[:, :, :1, :4])


def test_facts_and_the_backbone():
    from effattn.model import Transformer, TransformerConfig

    for name in NAMES:
        f = effattn.get_entry(name).facts
        assert (f.exact, f.causal_only, f.supports_causal, f.supports_padding, f.supports_cross) == (
            False, True, True, True, False)  # fmt: skip
        assert f.supports_decode and f.supports_gqa
        cfg = TransformerConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, attention=name)
        with pytest.raises(UnsupportedError, match="computes only the causal form"):
            Transformer(cfg, shape="encoder")
        model = Transformer(cfg, shape="decoder")
        before = [n for n, _ in model.named_parameters()]  # the backbone passes head_dim: gates made now
        assert any("core." in n for n in before), before
        x = torch.randint(0, 11, (2, 9))
        model(x).sum().backward()
        assert [n for n, _ in model.named_parameters()] == before
        assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- flash-linear-attention's references
def _fla_naive(rel: str):
    """fla's reference module fla/ops/<rel>.py, loaded by path (effattn.fla_reference: `import fla`
    needs Triton, the naive modules only torch and einops)."""
    from effattn import fla_reference

    mod = fla_reference.load(rel)
    if mod is None:
        pytest.skip(f"fla-core with fla/ops/{rel}.py is not installed: pip install 'effattn[peers]'")
    return mod


FLA_TOL = 2e-5  # fla's references compute in float32 whatever they are given


@pytest.mark.parametrize("chunk", [64, 32, 7])
def test_gla_equals_fla_naive_recurrent_gla(chunk):
    ref = _fla_naive("gla/naive").naive_recurrent_gla
    B, H, n, D = 2, 3, 50, 16
    attn = _build("gla_core", D, chunk=chunk)
    q, k, v = _qkv(B, H, H, n, D, seed=8)
    with torch.no_grad():
        gk = attn.log_gate(k)  # fla takes the log gate itself, (B, T, H, D), and scales q by D^-1/2
        want, _ = ref(*(t.transpose(1, 2) for t in (q, k, v, gk)))
        out = attn(q, k, v, causal=True)
    assert _max_err(out, want.transpose(1, 2).double()) < FLA_TOL


@pytest.mark.parametrize("chunk", [64, 32, 7])
def test_deltanet_equals_fla_delta_rule_recurrence(chunk):
    ref = _fla_naive("delta_rule/naive").delta_rule_recurrence
    B, H, n, D = 2, 3, 50, 16
    attn = _build("deltanet_core", D, chunk=chunk)
    q, k, v = _qkv(B, H, H, n, D, seed=9)
    with torch.no_grad():
        beta, _ = attn.gates(k)  # fla takes beta itself and normalised q, k; (B, H, T, D)
        want, _ = ref(_l2(q), _l2(k), v, beta)
        out = attn(q, k, v, causal=True)
    assert _max_err(out, want.double()) < FLA_TOL


@pytest.mark.parametrize("chunk", [64, 32, 7])
def test_gated_deltanet_equals_fla_naive_recurrent_gated_delta_rule(chunk):
    ref = _fla_naive("gated_delta_rule/naive").naive_recurrent_gated_delta_rule
    B, H, n, D = 2, 3, 50, 16
    attn = _build("gated_deltanet_core", D, chunk=chunk)
    q, k, v = _qkv(B, H, H, n, D, seed=10)
    with torch.no_grad():
        beta, log_alpha = attn.gates(k)  # fla takes beta and the log gate g, (B, T, H)
        want, _ = ref(*(t.transpose(1, 2) for t in (_l2(q), _l2(k), v, beta, log_alpha)))
        out = attn(q, k, v, causal=True)
    assert _max_err(out, want.transpose(1, 2).double()) < FLA_TOL
