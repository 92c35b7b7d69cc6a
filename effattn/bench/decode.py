"""`--mode decode`: one point is a context of n tokens and the step that decodes token n + 1.

The prefill of the n tokens is timed once (`prefill_ms`, its peak memory in
`prefill_peak_mem_bytes`); the step is what the rounds time (`time_ms` per token), each call
followed by `truncate(n)` where the cache grows, so that every timed step sees the same context
(a cache of constant size - a ring, a recurrent state - is the same size whatever the steps).
Recorded per point: `decode_backend` (native or recompute), `cache_bytes` (the cache's content at
context n, as the plugin states it), `step_read_bytes` and `step_flops` (what one step reads and
computes, at the attention level), and, once timed, the achieved bandwidth against the machine's,
measured in the same group (`membw_peak_gbs`).
"""

from __future__ import annotations

import math
import time

import torch

from ..decoding import cache_nbytes, decoder_for
from ..errors import UnsupportedError
from ..reference import tolerance
from ..spec import Variant
from . import measure
from .exactness import MASK_MAX_N, applies
from .point import (
    InputSet,
    Prepared,
    SweepSpec,
    _build,
    _cores,
    base_row,
    over_budget,
    record_failure,
)
from .validate import check_output


def _truncate(caches, n: int) -> None:
    for c in caches:
        t = getattr(c, "truncate", None)
        if callable(t):
            t(n)


def prepare_decode(spec: SweepSpec, variant: Variant, n: int, inputs: InputSet, tick=None) -> Prepared:
    row = {**base_row(spec, variant, n), "status": "ok", "reason": None}
    beat = (lambda: tick(variant.label)) if tick is not None else (lambda: None)
    try:
        beat()
        torch.manual_seed(spec.seed)
        module = _build(spec, variant).eval()
        cores = _cores(module, spec.level)
        core = cores[0]
        dec = decoder_for(core, variant.label)  # UnsupportedError for a plugin that cannot run causally
        row["decode_backend"] = dec.backend
        too_big = over_budget(spec, core, n, inputs, row)
        if too_big:
            return Prepared(variant, {**row, "status": "oom", "reason": too_big})
        budget = spec.memory_budget_bytes
        tensors = inputs.get()
        row["input_bytes"] = measure.storage_bytes(tensors)
        dtype = getattr(torch, spec.dtype)
        B, H, D = spec.batch, spec.heads, spec.head_dim
        K = spec.kv_heads or H

        if spec.level == "attention":
            q, k, v = tensors
            prompt = (q[:, :, :n], k[:, :, :n], v[:, :, :n])
            token = (q[:, :, n:], k[:, :, n:], v[:, :, n:])

            def new():
                return [dec.new_cache(B, K, D, dtype=dtype, device=spec.device, max_len=n + 1)]

            def prefill(caches):
                return dec.prefill(caches[0], *prompt)

            def one_step(caches):
                return dec.step(caches[0], *token)
        elif spec.level == "layer":
            (x,) = tensors

            def new():
                return [module.new_cache(B, dtype, spec.device, n + 1)]

            def prefill(caches):
                return module.prefill(caches[0], x[:, :n])

            def one_step(caches):
                return module.step(caches[0], x[:, n:])
        else:
            (tokens,) = tensors

            def new():
                return module.new_caches(B, dtype, spec.device, n + 1)

            def prefill(caches):
                return module.prefill(caches, tokens[:, :n])

            def one_step(caches):
                return module.step(caches, tokens[:, n:], n)

        caches_box = []

        def run_prefill():
            caches_box[:] = new()
            with torch.no_grad():
                return prefill(caches_box)

        beat()
        t0 = time.perf_counter()
        out, peak, _net = measure.profile_memory(run_prefill, spec.device)
        row["prefill_ms"] = (time.perf_counter() - t0) * 1e3
        row["prefill_peak_mem_bytes"] = peak
        del out
        caches = list(caches_box)
        if row["prefill_ms"] / 1e3 > spec.timeout_s:
            return Prepared(
                variant,
                {
                    **row,
                    "status": "timeout",
                    "reason": f"the prefill took {row['prefill_ms'] / 1e3:.1f} s > timeout {spec.timeout_s:g} s",
                },
            )
        sizes = [cache_nbytes(c) for c in caches]
        row["cache_bytes"] = None if any(x is None for x in sizes) else sum(sizes)
        row["backend"] = getattr(core, "last_backend", None)

        def step():
            beat()
            with torch.no_grad():
                out = one_step(caches)
            _truncate(caches, n)
            return out

        # the first step: validated and timed; then the steady step's memory
        t0 = time.perf_counter()
        first = step()
        row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
        first = first.detach()
        if spec.level == "attention":
            problem = check_output(first, token[0], token[2], "the step's output")
        else:
            ok = isinstance(first, torch.Tensor) and first.shape[:2] == (B, 1) and bool(torch.isfinite(first).all())
            problem = None if ok else "the step's output is not a finite (batch, 1, ...) tensor"
        if problem:
            return Prepared(variant, {**row, "status": "error", "reason": problem})
        if row["first_call_ms"] / 1e3 > spec.timeout_s:
            return Prepared(
                variant,
                {
                    **row,
                    "status": "timeout",
                    "reason": f"one step took {row['first_call_ms'] / 1e3:.1f} s > timeout {spec.timeout_s:g} s",
                },
            )
        t0 = time.perf_counter()
        out, peak, _net, seen = measure.profile_memory(step, spec.device, with_events=True)
        per_call = time.perf_counter() - t0
        row["peak_mem_bytes"] = peak if seen or not out.numel() else None
        if spec.level == "attention":
            c = caches[0]
            row["step_read_bytes"] = getattr(c, "last_read_bytes", None)
            flops = getattr(c, "last_flops", None)
            if flops is None and dec.backend == "recompute":
                pairs = measure.attended_pairs(core, n + 1, n + 1, True)
                flops = None if pairs is None else 4 * B * H * D * pairs
            row["step_flops"] = flops
            row["flops"] = flops
            row["exact"] = bool(getattr(core, "exact", False))
            if spec.error or row["exact"]:
                beat()
                row.update(_decode_errors(core, tensors, n, first))  # the first step saw exactly n tokens
                problem = _inexact(row, spec.dtype)
                if problem:
                    return Prepared(variant, {**row, "status": "error", "reason": problem})
        del out, first
        if budget and row["peak_mem_bytes"] is not None:
            held = row["input_bytes"] + max(row["prefill_peak_mem_bytes"] or 0, (row["cache_bytes"] or 0) + peak)
            if held > budget:
                return Prepared(
                    variant,
                    {
                        **row,
                        "status": "oom",
                        "reason": f"inputs, cache and the larger of prefill and step peaks ({held} bytes) exceed the "
                        f"memory budget {budget}",
                    },
                )
        if not inputs.intact():
            return Prepared(
                variant, {**row, "status": "error", "reason": f"{variant.label} modified its inputs in place"}
            )
        return Prepared(variant, row, step, per_call, [])
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure is a recorded status
        if isinstance(e, UnsupportedError) or "unsupported" in type(e).__name__.lower():
            row.update(status="unsupported", reason=str(e))
        else:
            record_failure(row, None, e)
    return Prepared(variant, row)


def _inexact(row: dict, dtype: str) -> str | None:
    """Why an exact plugin's step is wrong: its output beyond rounding from its own pattern's."""
    err, tol = row.get("rel_err_vs_own_dense"), row.get("exact_tolerance")
    if err is None or tol is None or err <= tol:
        return None
    return (
        f"not exact: the step's output differs from its own dense_mask's pattern by {err:.2e} "
        f"(relative; {dtype} rounding stays below {tol:.0e})"
    )


def _decode_errors(core, tensors, n: int, out) -> dict:
    """The step's output against `full`'s on the same n + 1 tokens (the last row of exact causal
    softmax), and for an exact plugin with a dense_mask (n + 1 <= MASK_MAX_N) against its own
    pattern's last row, in float64; `exact_check` says which was done."""
    from ..attention._decode import attend

    q, k, v = (t.detach() for t in tensors)
    qn = q[:, :, n:]
    res = {"rel_err_vs_full": None, "cosine_vs_full": None, "rel_err_vs_own_dense": None}
    with torch.no_grad():
        ref = attend(qn.double(), k.double(), v.double())
        res["rel_err_vs_full"], res["cosine_vs_full"] = measure.output_errors(out, ref)
        mask = getattr(core, "dense_mask", None)
        res["exact_check"] = applies(core)
        if res["exact_check"] is None and n + 1 > MASK_MAX_N:
            res["exact_check"] = f"not computed: n + 1 = {n + 1} > {MASK_MAX_N} (the reference needs the mask)"
        elif res["exact_check"] is None:
            keep = mask(n + 1, n + 1, True)[-1].to(q.device)  # the newest token's row
            own = attend(qn.double(), k.double(), v.double(), keep[None].expand(q.shape[0], -1))
            res["rel_err_vs_own_dense"] = measure.output_errors(out, own)[0]
            res["exact_tolerance"] = tolerance(out.dtype)
            res["exact_check"] = "the step's output against its own pattern's last row"
    return {k2: (x if not isinstance(x, float) or math.isfinite(x) else None) for k2, x in res.items()}
