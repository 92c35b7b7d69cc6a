"""The cases of benchmarks/references.py: each newer variant with the options it is measured at,
and the reference implementation it is measured against (see that script's docstring).

A reference is a function of (q, k, v) computing what the plugin computes by an independent route
where one exists: fla-core's naive recurrences (loaded without Triton, effattn.fla_reference), fed
the plugin's own gates; else a dense float64 definition.
"""

from __future__ import annotations

import math
import signal
import time

B, H, D = 1, 4, 64

#: (case name, variant, options, quick options, reference, independent?)
CASES = [
    ("gla", "gla_core", {"head_dim": D}, {"head_dim": D}, "fla naive_recurrent_gla", True),
    ("deltanet", "deltanet_core", {"head_dim": D}, {"head_dim": D}, "fla delta_rule_recurrence", True),
    ("gated_deltanet", "gated_deltanet_core", {"head_dim": D}, {"head_dim": D},
     "fla naive_recurrent_gated_delta_rule", True),
    ("nsa", "nsa", {}, dict(block_size=8, block_stride=4, select_size=16, top_n=4, window=32),
     "effattn nsa_reference (dense float64)", False),
    ("nsa:fla", "nsa", dict(block_size=64, block_stride=64, select_size=64, top_n=16, window=512, local_blocks=2),
     dict(block_size=16, block_stride=16, select_size=16, top_n=4, window=32, local_blocks=2),
     "fla naive NSA (topk + compression + selection) + effattn sliding_window", True),
    ("moba", "moba", {}, dict(block_size=16, top_k=3), "effattn moba_reference (dense float64)", False),
    ("sliding_window_sinks", "sliding_window_sinks", {}, dict(window=32, sinks=4),
     "dense masked softmax, float64", False),
]  # fmt: skip
CASE_NAMES = [c[0] for c in CASES]
MEASURES = ("fwd", "fwdbwd", "memory", "error_float32", "error_float64")


# --- fla's naive references
def fla_naive(rel: str):
    """fla/ops/<rel>.py loaded without Triton (effattn.fla_reference), or None."""
    from effattn import fla_reference

    return fla_reference.load(rel)


# --- the references
def _l2(x):
    """The delta rules' L2 normalisation of q and k (docs/semantics.md)."""
    return x / (x * x).sum(-1, keepdim=True).add(1e-6).sqrt()


def _bthd(x):
    return x.transpose(1, 2).contiguous()


def make_reference(case: str, attn):
    """(fn(q, k, v) -> (B, H, n, Dv) tensor, takes_float64) for a case, or (None, reason)."""
    import torch

    from effattn import create_attention

    if case == "gla":
        mod = fla_naive("gla/naive")
        if mod is None:
            return None, "skipped: fla-core not installed (pip install 'effattn[peers]')"

        def gla(q, k, v):
            o, _ = mod.naive_recurrent_gla(*(_bthd(t) for t in (q, k, v, attn.log_gate(k))))
            return o.transpose(1, 2)

        return gla, False
    if case == "deltanet":
        mod = fla_naive("delta_rule/naive")
        if mod is None:
            return None, "skipped: fla-core not installed (pip install 'effattn[peers]')"

        def delta(q, k, v):
            beta, _ = attn.gates(k)
            o, _ = mod.delta_rule_recurrence(_l2(q), _l2(k), v, beta)
            return o

        return delta, False
    if case == "gated_deltanet":
        mod = fla_naive("gated_delta_rule/naive")
        if mod is None:
            return None, "skipped: fla-core not installed (pip install 'effattn[peers]')"

        def gated(q, k, v):
            beta, log_alpha = attn.gates(k)
            o, _ = mod.naive_recurrent_gated_delta_rule(*(_bthd(t) for t in (_l2(q), _l2(k), v, beta, log_alpha)))
            return o.transpose(1, 2)

        return gated, False
    if case == "nsa":
        from effattn.attention.nsa import nsa_reference

        return (lambda q, k, v: nsa_reference(attn, q, k, v, True)), True
    if case == "nsa:fla":
        mod = fla_naive("nsa/naive")
        if mod is None:
            return None, "skipped: fla-core has no fla/ops/nsa/naive.py (pip install 'effattn[peers]')"
        bs, top_n, w = attn.block_size, attn.top_n, attn.window
        swa = create_attention("sliding_window", window=w - 1)

        def nsa_fla(q, k, v):
            n, d = q.shape[2], q.shape[3]
            scale = d**-0.5
            # fla compresses non-overlapping blocks by mean pooling (the last one partial)
            kc, vc = (torch.stack([x[:, :, s : s + bs].mean(2) for s in range(0, n, bs)], 2) for x in (k, v))
            with torch.no_grad():
                idx = mod.naive_nsa_topk(_bthd(q), _bthd(kc), top_n, bs, scale)  # fla's own choice
            o_cmp, _ = mod.naive_nsa_compression(_bthd(q), _bthd(kc), _bthd(vc), bs, scale)
            o_slc = mod.naive_nsa_selection(_bthd(q), _bthd(k), _bthd(v), idx, bs, scale)
            g = torch.sigmoid(q @ attn.gate_weight[:d].to(q.dtype) + attn.gate_bias.to(q.dtype))
            o_swa = swa(q, k, v, causal=True)
            return g[..., 0:1] * _bthd(o_cmp).to(q.dtype) + g[..., 1:2] * _bthd(o_slc).to(q.dtype) + g[..., 2:3] * o_swa

        return nsa_fla, False
    if case == "moba":
        from effattn.attention.moba import moba_reference

        return (lambda q, k, v: moba_reference(q, k, v, attn.block_size, attn.top_k, True)), True
    if case == "sliding_window_sinks":
        masks = {}

        def dense(q, k, v):
            n = q.shape[2]
            if n not in masks:
                masks[n] = attn.dense_mask(n, n, True)
            q, k, v = q.double(), k.double(), v.double()
            s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            return s.masked_fill(~masks[n], float("-inf")).softmax(-1) @ v

        return dense, True
    raise AssertionError(case)


# --- one call, bounded
class TooSlow(Exception):
    pass


def first_call(fn, limit: float | None):
    """(result, seconds) of one call, interrupted past `limit` seconds (TooSlow)."""

    def alarm(signum, frame):
        raise TooSlow()

    if limit:
        signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0
    finally:
        if limit:
            signal.setitimer(signal.ITIMER_REAL, 0)


def errors(a, b) -> dict:
    a, b = a.detach().double(), b.detach().double()
    return {"max_abs": float((a - b).abs().max()), "rel_fro": float((a - b).norm() / b.norm().clamp_min(1e-300)),
            "ref_max_abs": float(b.abs().max())}  # fmt: skip


def why_failed(e: BaseException, what: str, limit: float) -> str:
    if isinstance(e, TooSlow):
        return f"skipped: too slow (one {what} > {limit:g} s)"
    return f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
