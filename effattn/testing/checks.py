"""The checks of the conformance suite but decoding's (`decoding_checks`): shapes and dtypes,
finite outputs and gradients, the declared pattern exercised and computed exactly (forward and
gradients, against a float64 reference), no leak from the future or from padding, inputs and the
process left alone, determinism, and grouped-query heads."""

from __future__ import annotations

import torch

from ..errors import UnsupportedError
from ..guard import TorchState
from ..reference import reference_attention
from .suite import EXACT_RTOL, Failures, Skip, Suite, check, kv_heads, label, padding, rel_err


@check("shape_and_dtype")
def shape_and_dtype(s: Suite):
    """float32, and every other dtype the plugin declares (a claim is a promise to run in it)."""
    fails = Failures()
    declared = [str(d).replace("torch.", "") for d in s.facts.dtypes]
    for dt in ["float32"] + [d for d in ("float64", "bfloat16", "float16") if d in declared]:
        dtype = getattr(torch, dt)

        def one(dtype=dtype):
            q, k, v = s.inputs(11, 11, dtype)
            out = s.call(q, k, v, **s.plain)
            assert tuple(out.shape) == tuple(q.shape), f"output shape {tuple(out.shape)}, want {tuple(q.shape)}"
            assert out.dtype == dtype, f"output dtype {out.dtype}, want {dtype} (the inputs' dtype)"
            assert torch.isfinite(out).all(), "non-finite output (the plugin declares this dtype)"

        fails.case(dt, one)
    if s.facts.causal_only:  # the claim is a promise to refuse the other form, never to compute it silently

        def refuses():

            q, k, v = s.inputs(11, 11)
            try:
                s.attn(q, k, v, causal=False)
            except UnsupportedError:
                return
            except Exception as e:
                raise AssertionError(f"causal=False raised {type(e).__name__}, want UnsupportedError: {e}") from e
            raise AssertionError("the plugin declares causal_only but computed causal=False instead of refusing it")

        fails.case("causal_only", refuses)
    fails.raise_any()


@check("finite_outputs_and_gradients")
def finite_outputs_and_gradients(s: Suite):
    fails = Failures()
    for n_q, n_k, causal, pad in s.cases():

        def one(n_q=n_q, n_k=n_k, causal=causal, pad=pad):
            q, k, v = (t.requires_grad_() for t in s.inputs(n_q, n_k))
            kpm = padding(s.batch, n_k, s.device) if pad else None
            out = s.call(q, k, v, causal=causal, key_padding_mask=kpm)
            assert tuple(out.shape) == tuple(q.shape), f"output shape {tuple(out.shape)}, want {tuple(q.shape)}"
            assert torch.isfinite(out).all(), "non-finite output"
            if pad and s.batch > 1:
                worst = out[1].abs().max().item()
                assert worst == 0, (
                    f"batch row 1 is fully padded (key_padding_mask all True), so its output must be zeros; "
                    f"max |out| there is {worst:.2e}"
                )
            out.square().sum().backward()
            for nm, t in zip("qkv", (q, k, v)):
                assert t.grad is not None, f"no gradient reaches {nm}"
                assert torch.isfinite(t.grad).all(), f"non-finite gradient of {nm}"

        fails.case(label(n_q, n_k, causal, pad), one)
    fails.raise_any()
    return f"{len(s.cases())} cases"


@check("pattern_exercised")
def pattern_exercised(s: Suite):
    if not s.facts.exact or not s.facts.has_dense_mask:
        raise Skip("approximate plugin: no pattern to exercise")
    lens = ", ".join(map(str, s.seq_lens))
    assert s.pattern_problem is None, s.pattern_problem
    if s.sparse_from is None:
        up_to = f"up to {s.n_max}" + (f" ({s.refused})" if s.refused else "")
        raise Skip(
            f"the pattern was never exercised: dense_mask attends every pair at every length {up_to} "
            "(a full pattern; otherwise pass options that make it sparse, e.g. window=16)"
        )
    return f"dense_mask excludes pairs from n={s.sparse_from}; exactness checked at n = {lens}"


@check("exact_vs_reference")
def exact_vs_reference(s: Suite):
    if not s.facts.exact:
        raise Skip("approximate plugin")
    assert s.facts.has_dense_mask, "an exact plugin must have dense_mask(n_q, n_k, causal)"
    dense_mask = s.attn.dense_mask
    fails, worst = Failures(), [0.0]
    for n_q, n_k, causal, pad in s.cases():

        def one(n_q=n_q, n_k=n_k, causal=causal, pad=pad):
            q, k, v = s.inputs(n_q, n_k, seed_offset=1)
            kpm = padding(s.batch, n_k, s.device) if pad else None
            m = dense_mask(n_q, n_k, causal=causal).to(s.device)
            assert tuple(m.shape) == (n_q, n_k) and m.dtype == torch.bool, (
                f"dense_mask returned {m.dtype} {tuple(m.shape)}, want torch.bool ({n_q}, {n_k})"
            )
            allowed = m if kpm is None else (m & ~kpm[:, None, None, :])
            qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
            q32, k32, v32 = (t.detach().clone().requires_grad_() for t in (q, k, v))
            ref = reference_attention(qr, kr, vr, allowed)
            out = s.call(q32, k32, v32, causal=causal, key_padding_mask=kpm)
            if pad and s.batch > 1 and out[1].abs().max() != 0:
                raise AssertionError(
                    "batch row 1 is fully padded (key_padding_mask all True), so its output must be zeros; "
                    f"max |out| there is {out[1].abs().max().item():.2e}"
                )
            err = rel_err(out, ref)
            assert err <= EXACT_RTOL, f"forward relative error {err:.2e} > {EXACT_RTOL:g} against dense_mask's pattern"
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(s.device)
            (ref * g.double()).sum().backward()
            (out * g).sum().backward()
            for nm, a, b in zip("qkv", (q32, k32, v32), (qr, kr, vr)):
                if b.grad.norm() == 0:
                    # exactly zero in float64 (n_k = 1, or a window of 0): float32 roundoff is
                    # allowed, measured against the scale of the value gradient
                    small = 0.0 if a.grad is None else float(a.grad.norm() / vr.grad.norm().clamp_min(1e-30))
                    assert small <= EXACT_RTOL, f"gradient of {nm} should be 0, relative size {small:.1e}"
                    continue
                assert a.grad is not None, f"no gradient reaches {nm}"
                e = rel_err(a.grad, b.grad)
                assert e <= EXACT_RTOL, f"gradient of {nm}: relative error {e:.2e} > {EXACT_RTOL:g}"
                worst[0] = max(worst[0], e)
            worst[0] = max(worst[0], err)

        fails.case(label(n_q, n_k, causal, pad), one)
    fails.raise_any()
    return f"worst relative error {worst[0]:.1e} over {len(s.cases())} cases at n = {', '.join(map(str, s.seq_lens))}"


def _unchanged(before, after, what: str) -> None:
    """Outputs that must not move when `what` changes: equal within float32 roundoff of their scale."""
    scale = before.detach().abs().max().clamp_min(1e-30)
    moved = float((after.detach() - before.detach()).abs().max() / scale)
    assert moved <= EXACT_RTOL, f"changing {what} moved the output by {moved:.1e} of its scale"


@check("causal_no_future_leak")
def causal_no_future_leak(s: Suite):
    """By gradients (no path from a later position) and by values (new values at later positions
    leave earlier outputs unchanged: a path through a detached statistic has no gradient)."""
    if not s.facts.supports_causal:
        raise Skip("causal not supported")
    n = s.n_max
    q, k, v = (t.requires_grad_() for t in s.inputs(n, n, batch=1))
    out = s.call(q, k, v, causal=True)
    fails = Failures()
    if n > 1:

        def by_value():
            t = n // 2
            later = s.inputs(n, n, batch=1, seed_offset=99)
            q2, k2, v2 = (torch.cat([a.detach()[:, :, : t + 1], b[:, :, t + 1 :]], 2) for a, b in zip((q, k, v), later))
            with torch.no_grad():
                out2 = s.call(q2, k2, v2, causal=True)
            _unchanged(out[:, :, : t + 1], out2[:, :, : t + 1], f"q, k and v after position {t}")

        fails.case(f"n={n}, outputs up to position {n // 2}", by_value)
    for t in sorted({0, n // 3, n - 2}):
        if t < 0 or t >= n - 1:
            continue

        def one(t=t):
            grads = torch.autograd.grad(out[:, :, t].sum(), (q, k, v), retain_graph=True, allow_unused=True)
            for nm, gr in zip("qkv", grads):
                assert gr is None or torch.isfinite(gr).all(), f"non-finite gradient of {nm} (see the other checks)"
                leak = 0.0 if gr is None else gr[:, :, t + 1 :].abs().max().item()
                assert leak == 0, f"the output at position {t} depends on {nm} after {t} (max |grad| {leak:.2e})"

        fails.case(f"n={n}", one)
    fails.raise_any()


@check("padding_no_leak")
def padding_no_leak(s: Suite):
    if not s.facts.supports_padding:
        raise Skip("key_padding_mask not supported")
    n = s.n_max
    q, k, v = (t.requires_grad_() for t in s.inputs(n, n))
    kpm = padding(s.batch, n, s.device)
    out = s.call(q, k, v, key_padding_mask=kpm, **s.plain)
    gk, gv = torch.autograd.grad(out.sum(), (k, v), allow_unused=True)
    pad = kpm[:, None, :, None].expand(s.batch, s.heads, n, s.head_dim)
    fails = Failures()
    for nm, gr in (("k", gk), ("v", gv)):

        def one(gr=gr):
            leak = 0.0 if gr is None or not pad.any() else gr[pad].abs().max().item()
            assert leak == 0, f"the output depends on padded positions (max |grad| {leak:.2e})"

        fails.case(f"n={n}, gradient of {nm}", one)

    def by_value():
        other = s.inputs(n, n, seed_offset=99)
        keep = ~kpm[:, None, :, None]
        k2, v2 = (torch.where(keep, a.detach(), b) for a, b in zip((k, v), other[1:]))
        with torch.no_grad():
            out2 = s.call(q.detach(), k2, v2, key_padding_mask=kpm, **s.plain)
        _unchanged(out, out2, "the padded keys and values")

    fails.case(f"n={n}, outputs", by_value)
    fails.raise_any()


@check("leaves_inputs_and_process_alone")
def leaves_inputs_and_process_alone(s: Suite):
    """A call changes neither q, k, v and the mask nor the process (thread count, matmul precision,
    TF32, torch's functions): effattn measures many plugins in one process. What changed is undone."""
    n = min(s.n_max, 77)
    q, k, v = s.inputs(n, n)
    kpm = padding(s.batch, n, s.device) if s.facts.supports_padding else None
    before = [t.clone() for t in (q, k, v)] + ([kpm.clone()] if kpm is not None else [])
    guard = TorchState()
    try:
        with torch.no_grad():
            s.call(q, k, v, key_padding_mask=kpm, **s.plain) if kpm is not None else s.call(q, k, v, **s.plain)
    finally:
        state = guard.restore()
    changed = state.split("; ") if state else []
    names = ["q", "k", "v", "key_padding_mask"]
    changed += [f"modified {nm} in place" for nm, a, b in zip(names, before, (q, k, v, kpm)) if not torch.equal(a, b)]
    assert not changed, "; ".join(changed) + " (undone)"


@check("deterministic")
def deterministic(s: Suite):
    q, k, v = s.inputs(s.n_max, s.n_max)
    torch.manual_seed(s.seed)
    a = s.build().to(s.device)
    out1, out2 = a(q, k, v, **s.plain), a(q, k, v, **s.plain)
    torch.manual_seed(s.seed + 12345)  # a rebuilt plugin must not depend on the global RNG state...
    if s.rebuilds_from_name:  # ...unless it was handed over built (then it is the same module)
        torch.manual_seed(s.seed)
    out3 = s.build().to(s.device)(q, k, v, **s.plain)
    assert all(torch.isfinite(o).all() for o in (out1, out2, out3)), "non-finite output (see the other checks)"
    assert torch.equal(out1, out2), "two calls on the same input differ"
    assert torch.equal(out1, out3), "two plugins built with the same seed differ"


@check("grouped_query_heads")
def grouped_query_heads(s: Suite):
    """k, v with K < H heads equal the same call with each key/value head repeated over its group
    of H / K query heads (query head h reads key/value head h // (H / K))."""
    if not s.facts.supports_gqa:
        raise Skip("the plugin does not declare supports_gqa")
    kvs = kv_heads(s.heads)
    if not kvs:
        raise Skip("one query head: no grouping to check (run with heads >= 2)")
    fails = Failures()
    for K in kvs:
        for n_q, n_k, causal, pad in s.cases():

            def one(n_q=n_q, n_k=n_k, causal=causal, pad=pad, K=K):
                q, k, v = s.inputs(n_q, n_k, seed_offset=7)
                k, v = k[:, :K].contiguous(), v[:, :K].contiguous()
                kpm = padding(s.batch, n_k, s.device) if pad else None
                out = s.call(q, k, v, causal=causal, key_padding_mask=kpm)
                rep = s.heads // K
                want = s.call(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), causal=causal,
                              key_padding_mask=kpm)  # fmt: skip
                assert tuple(out.shape) == tuple(q.shape), f"output shape {tuple(out.shape)}, want {tuple(q.shape)}"
                err = rel_err(out, want)
                assert err <= EXACT_RTOL, f"K={K}: relative error {err:.2e} against k, v repeated to {s.heads} heads"

            fails.case(f"K={K} " + label(n_q, n_k, causal, pad), one)
    fails.raise_any()
    return f"K = {', '.join(map(str, kvs))} of {s.heads} heads, {len(s.cases())} cases each"
