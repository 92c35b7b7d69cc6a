"""`--mode decode`: one point is a context of n tokens and the step that decodes token n + 1.

    build -> budget -> prefill -> first step -> step memory -> step work and errors -> budget

The prefill of the n tokens is timed once (`prefill_ms`, its peak memory in
`prefill_peak_mem_bytes`); the step is what the rounds time (`time_ms` per token), each call
followed by `truncate(n)` where the cache grows, so that every timed step sees the same context
(a cache of constant size - a ring, a recurrent state - is the same size whatever the steps).
Recorded per point: `decode_backend` (native or recompute), `cache_bytes` (the cache's content at
context n, as the plugin states it), `step_read_bytes` and `step_flops` (what one step reads and
computes, at the attention level), and, once timed, the achieved bandwidth against the machine's,
measured in the same group (`membw_peak_gbs`). The stages share `effattn.bench.point`'s `Point`.
"""

from __future__ import annotations

import math
import time

import torch

from .. import contract
from ..decoding import cache_nbytes, decoder_for
from ..kernels.caches import attend
from ..reference import tolerance
from . import measure
from .exactness import MASK_MAX_N, applies
from .measurement import PointEnded
from .point import InputSet, Point, Prepared, budget, record_failure
from .spec import PointSpec
from .validate import check_output


def prepare_decode(spec: PointSpec, inputs: InputSet, tick=None) -> Prepared:
    """Everything of a decoding point but its timing (the stages above). Never raises for the
    point's own failure."""
    p = Point(spec, inputs, tick)
    try:
        for stage in (build_decoder, budget, prefill, first_step, step_memory, step_work, budget_after):
            stage(p)
        p.check_intact()
        return Prepared(p.m, p.step, p.per_call_s, [])
    except PointEnded as e:
        p.m.end(e.status, e.reason)
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure is a recorded status
        if "unsupported" in type(e).__name__.lower():
            p.m.end("unsupported", str(e))
        else:
            record_failure(p.m, None, e)
    return Prepared(p.m)


def build_decoder(p: Point) -> None:
    """The module in eval mode and its decoder: the plugin's own cache, or recomputation
    (UnsupportedError, in the decoder's words, for a plugin that cannot run causally)."""
    p.beat()
    p.module = p.build().eval()
    p.cores = p.level.cores(p.module)
    p.core = p.cores[0]
    p.decoder = decoder_for(p.core, p.spec.label)
    p.m.decode_backend = p.decoder.backend
    declared = contract.facts(p.core).dtypes
    if p.spec.dtype not in declared:
        raise PointEnded("unsupported", f"{p.spec.label} declares dtypes {', '.join(declared)}, not {p.spec.dtype}")


def _calls(p: Point):
    """(new caches, prefill of the n-token context, one step) for the point's level."""
    spec, n, dec = p.spec, p.spec.n, p.decoder
    B, D, dtype = spec.batch, spec.head_dim, spec.torch_dtype
    if spec.level == "attention":
        q, k, v = p.tensors
        prompt, token = (q[:, :, :n], k[:, :, :n], v[:, :, :n]), (q[:, :, n:], k[:, :, n:], v[:, :, n:])
        p.token = token
        return (
            lambda: [dec.new_cache(B, spec.key_heads, D, dtype=dtype, device=spec.device, max_len=n + 1)],
            lambda caches: dec.prefill(caches[0], *prompt),
            lambda caches: dec.step(caches[0], *token),
        )
    (x,) = p.tensors
    m = p.module
    if spec.level == "layer":
        return (
            lambda: [m.new_cache(B, dtype, spec.device, n + 1)],
            lambda caches: m.prefill(caches[0], x[:, :n]),
            lambda caches: m.step(caches[0], x[:, n:]),
        )
    return (
        lambda: m.new_caches(B, dtype, spec.device, n + 1),
        lambda caches: m.prefill(caches, x[:, :n]),
        lambda caches: m.step(caches, x[:, n:], n),
    )


def prefill(p: Point) -> None:
    """The n-token context, timed once with its peak memory; the caches it fills are kept."""
    new, fill, one_step = _calls(p)
    box = []

    def run():
        box[:] = new()
        with torch.no_grad():
            return fill(box)

    p.beat()
    t0 = time.perf_counter()
    out, peak, _net = measure.profile_memory(run, p.spec.device)
    p.m.prefill_ms = (time.perf_counter() - t0) * 1e3
    p.m.prefill_peak_mem_bytes = peak
    del out
    p.caches = list(box)
    if p.m.prefill_ms / 1e3 > p.spec.timeout_s:
        raise PointEnded("timeout", f"the prefill took {p.m.prefill_ms / 1e3:.1f} s > timeout {p.spec.timeout_s:g} s")
    sizes = [cache_nbytes(c) for c in p.caches]
    p.m.cache_bytes = None if any(x is None for x in sizes) else sum(sizes)
    p.m.backend = contract.last_backend(p.core)

    def step():
        p.beat()
        with torch.no_grad():
            out = one_step(p.caches)
        for c in p.caches:  # every timed step sees the same context
            if callable(getattr(c, "truncate", None)):
                c.truncate(p.spec.n)
        return out

    p.step = step


def first_step(p: Point) -> None:
    """The first step: validated and timed."""
    t0 = time.perf_counter()
    first = p.step()
    p.m.first_call_ms = (time.perf_counter() - t0) * 1e3
    p.first = first.detach()
    spec = p.spec
    if spec.level == "attention":
        problem = check_output(p.first, p.token[0], p.token[2], "the step's output")
    else:
        ok = p.first.shape[:2] == (spec.batch, 1) and bool(torch.isfinite(p.first).all())
        problem = None if ok else "the step's output is not a finite (batch, 1, ...) tensor"
    if problem:
        raise PointEnded("error", problem)
    if p.m.first_call_ms / 1e3 > spec.timeout_s:
        raise PointEnded("timeout", f"one step took {p.m.first_call_ms / 1e3:.1f} s > timeout {spec.timeout_s:g} s")


def step_memory(p: Point) -> None:
    """The steady step's peak memory (and one step's duration, which sizes the timed blocks)."""
    t0 = time.perf_counter()
    out, peak, _net, seen = measure.profile_memory(p.step, p.spec.device, with_events=True)
    p.per_call_s = time.perf_counter() - t0
    p.step_peak = peak
    p.m.peak_mem_bytes = peak if seen or not out.numel() else None


def step_work(p: Point) -> None:
    """What one step reads and computes (attention level), and its output against exact causal
    softmax and, for an exact plugin, against its own pattern."""
    spec, m = p.spec, p.m
    if spec.level != "attention":
        return
    n, c = spec.n, p.caches[0]
    m.step_read_bytes = getattr(c, "last_read_bytes", None)
    flops = getattr(c, "last_flops", None)
    if flops is None and p.decoder.backend == "recompute":
        pairs = contract.attended_pairs(p.core, n + 1, n + 1, True)
        flops = None if pairs is None else 4 * spec.batch * spec.heads * spec.head_dim * pairs
    m.step_flops = m.flops = flops
    m.exact = bool(contract.facts(p.core).exact)
    if not (spec.error or m.exact):
        return
    p.beat()
    for name, value in step_errors(p.core, p.tensors, n, p.first).items():  # the first step saw n tokens
        setattr(m, name, value)
    err, tol = m.rel_err_vs_own_dense, m.exact_tolerance
    if err is not None and tol is not None and err > tol:
        raise PointEnded(
            "error",
            f"not exact: the step's output differs from its own dense_mask's pattern by {err:.2e} "
            f"(relative; {spec.dtype} rounding stays below {tol:.0e})",
        )


def budget_after(p: Point) -> None:
    """Inputs, cache and the larger of the prefill's and the step's peaks against the budget."""
    m, limit = p.m, p.spec.memory_budget_bytes
    if not limit or m.peak_mem_bytes is None:
        return
    held = m.input_bytes + max(m.prefill_peak_mem_bytes or 0, (m.cache_bytes or 0) + p.step_peak)
    if held > limit:
        raise PointEnded(
            "oom",
            f"inputs, cache and the larger of prefill and step peaks ({held} bytes) exceed the memory budget {limit}",
        )


def step_errors(core, tensors, n: int, out) -> dict:
    """The step's output against `full`'s on the same n + 1 tokens (the last row of exact causal
    softmax), and for an exact plugin with a dense_mask (n + 1 <= MASK_MAX_N) against its own
    pattern's last row, in float64; `exact_check` says which was done."""
    q, k, v = (t.detach() for t in tensors)
    qn = q[:, :, n:]
    res = {"rel_err_vs_full": None, "cosine_vs_full": None, "rel_err_vs_own_dense": None}
    with torch.no_grad():
        ref = attend(qn.double(), k.double(), v.double())
        res["rel_err_vs_full"], res["cosine_vs_full"] = measure.output_errors(out, ref)
        res["exact_check"] = applies(core)
        if res["exact_check"] is None and n + 1 > MASK_MAX_N:
            res["exact_check"] = f"not computed: n + 1 = {n + 1} > {MASK_MAX_N} (the reference needs the mask)"
        elif res["exact_check"] is None:
            keep = contract.dense_mask(core, n + 1, n + 1, True)[-1].to(q.device)  # the newest token's row
            own = attend(qn.double(), k.double(), v.double(), keep[None].expand(q.shape[0], -1))
            res["rel_err_vs_own_dense"] = measure.output_errors(out, own)[0]
            res["exact_tolerance"] = tolerance(out.dtype)
            res["exact_check"] = "the step's output against its own pattern's last row"
    return {k2: (x if not isinstance(x, float) or math.isfinite(x) else None) for k2, x in res.items()}
