"""The conformance suite every plugin goes through: `check_attention(name_or_module, **options)`.

Plugin authors call it from their own tests; it raises `AssertionError` naming the failed check.
`run_checks` returns every check's outcome instead (the CLI's `effattn check` prints them).

What is checked depends on what the plugin declares (see `effattn.registry.Facts`):
shape and dtype, finite outputs and gradients, exactness against a float64 dense reference
built from `dense_mask` (exact plugins; forward and gradients, causal, padding, cross and
lengths that are no multiple of any block), no leak from the future (causal) or from padding,
and determinism for a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .registry import Facts, create_attention

#: relative error allowed between an exact plugin in float32 and the float64 reference.
EXACT_RTOL = 1e-5


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False


def reference_attention(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """Dense masked softmax attention in float64; rows with no allowed key give zeros.
    `allowed` broadcasts to (B, H, n_q, n_k)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    allowed = allowed.expand_as(scores)
    scores = scores.masked_fill(~allowed, float("-inf"))
    has_key = allowed.any(-1, keepdim=True)
    probs = torch.where(has_key, scores, torch.zeros_like(scores)).softmax(-1) * allowed
    return probs @ v


def _rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _inputs(b, h, n_q, n_k, d, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n: torch.randn(b, h, n, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return mk(n_q), mk(n_k), mk(n_k)


def _padding(b, n_k, seed, device):
    """Row 0 pads a tail, row 1 (if any) pads everything: the all-padded row must give zeros."""
    kpm = torch.zeros(b, n_k, dtype=torch.bool)
    kpm[0, max(1, n_k - max(1, n_k // 3)) :] = True
    if b > 1:
        kpm[1, :] = True
    return kpm.to(device)


def run_checks(
    name_or_module,
    *,
    seq_lens=(1, 23, 77),
    batch: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    device: str = "cpu",
    seed: int = 0,
    **options,
) -> list[CheckResult]:
    """Run every applicable check and return their results (never raises for a failed check)."""
    if isinstance(name_or_module, str):
        build: Callable[[], torch.nn.Module] = lambda: create_attention(name_or_module, **options)
    else:
        module = name_or_module
        build = lambda: module
    torch.manual_seed(seed)
    attn = build().to(device)
    facts = Facts.of(attn)
    results: list[CheckResult] = []

    def check(name, fn):
        try:
            detail = fn()
        except AssertionError as e:
            results.append(CheckResult(name, False, str(e)))
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, reported by name
            results.append(CheckResult(name, False, f"raised {type(e).__name__}: {e}"))
        else:
            results.append(CheckResult(name, True, detail or ""))

    def skip(name, why):
        results.append(CheckResult(name, True, why, skipped=True))

    n_max = max(seq_lens)
    cases = [(n, n, False, False) for n in seq_lens]
    if facts.supports_causal:
        cases += [(n, n, True, False) for n in seq_lens]
    if facts.supports_padding:
        cases += [(n_max, n_max, False, True)] + ([(n_max, n_max, True, True)] if facts.supports_causal else [])
    if facts.supports_cross:
        cases += [(max(1, n_max // 2), n_max, False, False), (n_max, max(1, n_max // 2) + 3, False, False)]
        if facts.supports_causal:
            cases.append((max(1, n_max // 2), n_max, True, False))

    def label(n_q, n_k, causal, pad):
        return f"n_q={n_q} n_k={n_k}" + (" causal" if causal else "") + (" padded" if pad else "")

    def shape_dtype():
        for dt in ("float32",) + tuple(x for x in ("bfloat16",) if x in facts.dtypes and device == "cpu"):
            dtype = getattr(torch, dt)
            q, k, v = _inputs(batch, heads, 11, 11, head_dim, dtype, device, seed)
            out = attn(q, k, v)
            assert out.shape == q.shape, f"{dt}: output shape {tuple(out.shape)} != {tuple(q.shape)}"
            assert out.dtype == dtype, f"{dt}: output dtype {out.dtype} != {dtype}"

    check("shape_and_dtype", shape_dtype)

    def finite():
        for n_q, n_k, causal, pad in cases:
            q, k, v = (
                t.requires_grad_() for t in _inputs(batch, heads, n_q, n_k, head_dim, torch.float32, device, seed)
            )
            kpm = _padding(batch, n_k, seed, device) if pad else None
            out = attn(q, k, v, causal=causal, key_padding_mask=kpm)
            assert out.shape == q.shape, f"{label(n_q, n_k, causal, pad)}: shape {tuple(out.shape)}"
            assert torch.isfinite(out).all(), f"{label(n_q, n_k, causal, pad)}: non-finite output"
            out.square().sum().backward()
            for nm, t in zip("qkv", (q, k, v)):
                assert t.grad is not None and torch.isfinite(t.grad).all(), (
                    f"{label(n_q, n_k, causal, pad)}: gradient of {nm} missing or non-finite"
                )
            if pad and batch > 1:
                assert out[1].abs().max() == 0, f"{label(n_q, n_k, causal, pad)}: fully padded row is not zero"

    check("finite_outputs_and_gradients", finite)

    if facts.exact:
        dense_mask = getattr(attn, "dense_mask", None)
        if dense_mask is None:
            results.append(CheckResult("exact_vs_reference", False, "exact plugin has no dense_mask(n_q, n_k, causal)"))
        else:

            def exact():
                worst = 0.0
                for n_q, n_k, causal, pad in cases:
                    q, k, v = _inputs(batch, heads, n_q, n_k, head_dim, torch.float32, device, seed + 1)
                    kpm = _padding(batch, n_k, seed, device) if pad else None
                    m = dense_mask(n_q, n_k, causal=causal).to(device)
                    assert m.shape == (n_q, n_k) and m.dtype == torch.bool, (
                        f"dense_mask returned {m.dtype} {tuple(m.shape)}, want bool ({n_q}, {n_k})"
                    )
                    allowed = m if kpm is None else (m & ~kpm[:, None, None, :])
                    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
                    q32, k32, v32 = (t.detach().clone().requires_grad_() for t in (q, k, v))
                    ref = reference_attention(qr, kr, vr, allowed)
                    out = attn(q32, k32, v32, causal=causal, key_padding_mask=kpm)
                    err = _rel_err(out, ref)
                    where = label(n_q, n_k, causal, pad)
                    assert err <= EXACT_RTOL, f"{where}: forward relative error {err:.2e} > {EXACT_RTOL:g}"
                    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(device)
                    (ref * g.double()).sum().backward()
                    (out * g).sum().backward()
                    for nm, a, b in zip("qkv", (q32, k32, v32), (qr, kr, vr)):
                        if b.grad.norm() == 0:
                            # exactly zero in float64 (n_k = 1, or a window of 0): float32 roundoff
                            # is allowed, measured against the scale of the value gradient.
                            small = 0.0 if a.grad is None else float(a.grad.norm() / vr.grad.norm().clamp_min(1e-30))
                            assert small <= EXACT_RTOL, (
                                f"{where}: gradient of {nm} should be 0, relative size {small:.1e}"
                            )
                            continue
                        e = _rel_err(a.grad, b.grad)
                        assert e <= EXACT_RTOL, f"{where}: gradient of {nm} relative error {e:.2e} > {EXACT_RTOL:g}"
                        worst = max(worst, e)
                    worst = max(worst, err)
                return f"worst relative error {worst:.1e} over {len(cases)} cases"

            check("exact_vs_reference", exact)
    else:
        skip("exact_vs_reference", "approximate plugin")

    if facts.supports_causal:

        def no_future_leak():
            n = n_max
            q, k, v = (t.requires_grad_() for t in _inputs(1, heads, n, n, head_dim, torch.float32, device, seed))
            out = attn(q, k, v, causal=True)
            for t in sorted({0, n // 3, n - 2}):
                if t < 0 or t >= n - 1:
                    continue
                gq, gk, gv = torch.autograd.grad(out[:, :, t].sum(), (q, k, v), retain_graph=True)
                for nm, gr in zip("qkv", (gq, gk, gv)):
                    leak = gr[:, :, t + 1 :].abs().max().item()
                    assert leak == 0, f"output at {t} depends on {nm} after {t} (max |grad| {leak:.2e})"

        check("causal_no_future_leak", no_future_leak)
    else:
        skip("causal_no_future_leak", "causal not supported")

    if facts.supports_padding:

        def no_padding_leak():
            n = n_max
            q, k, v = (t.requires_grad_() for t in _inputs(batch, heads, n, n, head_dim, torch.float32, device, seed))
            kpm = _padding(batch, n, seed, device)
            out = attn(q, k, v, key_padding_mask=kpm)
            gk, gv = torch.autograd.grad(out.sum(), (k, v))
            pad = kpm[:, None, :, None].expand_as(gk)
            leak = max(
                gk[pad].abs().max().item() if pad.any() else 0.0, gv[pad].abs().max().item() if pad.any() else 0.0
            )
            assert leak == 0, f"output depends on padded keys/values (max |grad| {leak:.2e})"

        check("padding_no_leak", no_padding_leak)
    else:
        skip("padding_no_leak", "key_padding_mask not supported")

    def deterministic():
        q, k, v = _inputs(batch, heads, n_max, n_max, head_dim, torch.float32, device, seed)
        torch.manual_seed(seed)
        a = build().to(device)
        out1 = a(q, k, v)
        out2 = a(q, k, v)
        torch.manual_seed(seed + 12345)  # a rebuilt plugin must not depend on the global RNG state
        if isinstance(name_or_module, str):
            torch.manual_seed(seed)
        b = build().to(device)
        out3 = b(q, k, v)
        assert torch.equal(out1, out2), "two calls on the same input differ"
        assert torch.equal(out1, out3), "two plugins built with the same seed differ"

    check("deterministic", deterministic)
    return results


def check_attention(name_or_module, **kwargs) -> list[CheckResult]:
    """Run the suite; raise AssertionError naming every failed check. Returns the results."""
    results = run_checks(name_or_module, **kwargs)
    failed = [r for r in results if not r.passed]
    if failed:
        raise AssertionError("; ".join(f"{r.name}: {r.detail}" for r in failed))
    return results
