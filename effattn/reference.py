"""The references a result is held to: masked softmax attention in float64 (the definition an
exact plugin must equal), exact softmax in the sweep's own dtype (what an approximation is
measured against), and how far from them rounding alone can take an output.

Both references are computed a block of query rows at a time: a softmax row depends on its own
query and every key, so blocks give the same numbers as one call while holding a block's scores
only (a float64 reference at n = 4096 held 1 GiB of scores in one call). Blocks also make the
references interruptible: with a `deadline`, the time of the first blocks projects the whole, and
a reference that cannot finish in time raises `ReferenceTimeout` instead of running on.

    allowed = dense_mask(n, n, causal)                     # (n_q, n_k) bool, True attends
    ref = reference_attention(q, k, v, allowed)            # float64, rows with no key give zeros
    ref_rows = reference_attention(q, k, v, allowed, rows=torch.tensor([0, 5, n - 1]))
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

#: the relative error ||out - ref|| / ||ref|| an exact computation in each dtype stays within,
#: against the float64 reference on the same (already rounded) inputs. Measured on every exact
#: built-in at n = 255, 1024, 4096, causal or not, padded or not (benchmarks/exactness_margins.py
#: prints them): float32 3e-7..5e-7, bfloat16 2e-3..5e-3, float16 3e-4..6e-4, float64 below 1e-15.
#: Each bound is 11x or more above the worst of them. (In bfloat16 an output 1% off cannot be told
#: from rounding; in float32 anything above 1e-5 can.)
TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 5e-2, "float16": 6e-3}
#: gradients pass through one more softmax and two more matmuls: the same bounds, times this
GRAD_TOLERANCE_FACTOR = 4.0
#: two calls of an exact plugin on the same inputs may differ by this much (relative), not more:
#: a few units in the last place of the dtype (kernels that reduce in a varying order, atomics)
DETERMINISM_ULPS = 8
#: the scores of one block of rows are kept under this many elements
BLOCK_ELEMENTS = 2**21  # (16 MiB of float64: reused by the allocator, not mapped anew per block)


class ReferenceTimeout(Exception):
    """A reference that would not finish before its deadline; the message says how long it would
    have taken."""


def tolerance(dtype) -> float:
    """How far from the float64 reference an exact output in `dtype` may be (relative)."""
    return TOLERANCE[_name(dtype)]


def determinism_tolerance(dtype) -> float:
    """How far apart two calls of an exact plugin on the same inputs may be (relative)."""
    return DETERMINISM_ULPS * torch.finfo(getattr(torch, _name(dtype))).eps


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero)."""
    a, b = out.detach().double(), ref.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def sample_rows(n: int, most: int = 256) -> torch.Tensor:
    """Which query rows a check of a long sequence looks at: all of them up to `most`, else the
    first and last quarter of `most` (edges: the first rows of a causal pattern, the window's ends)
    and the rest evenly spread, odd offsets included (no multiple of a block size is favoured)."""
    if n <= most:
        return torch.arange(n)
    edge = most // 4
    inner = torch.linspace(edge, n - edge - 1, most - 2 * edge).round().long()
    return torch.unique(torch.cat([torch.arange(edge), inner, torch.arange(n - edge, n)]))


class _Clock:
    """A deadline over blocks of work: after each block, the time so far projects the whole."""

    def __init__(self, deadline: float | None, what: str, tick=None):
        self.deadline, self.what, self.tick = deadline, what, tick
        self.start = time.monotonic()

    def after(self, done: int, total: int) -> None:
        if self.tick is not None:
            self.tick()
        if self.deadline is None or done >= total:
            return
        now = time.monotonic()
        projected = (now - self.start) * total / max(done, 1)
        if now > self.deadline or self.start + projected > self.deadline:
            budget = self.deadline - self.start
            raise ReferenceTimeout(
                f"{self.what} would take about {projected:.0f} s (> its {budget:.0f} s budget, the --timeout)"
            )


def _blocks(total: int, per_row: int) -> list[tuple[int, int]]:
    r = max(1, BLOCK_ELEMENTS // max(1, per_row))
    return [(i, min(total, i + r)) for i in range(0, total, r)]


def reference_attention(
    q, k, v, allowed, *, key_padding_mask=None, rows=None, deadline=None, tick=None
) -> torch.Tensor:
    """Masked softmax attention `softmax(q k^T / sqrt(d) + mask) v` in float64, a block of query
    rows at a time; a row with no allowed key gives zeros. `allowed` is bool and broadcasts to
    (B, H, n_q, n_k); `key_padding_mask` (B, n_k) is True at padding. k and v may carry fewer heads
    than q (grouped-query: query head h reads key/value head h // (H / K)). `rows` (an index
    tensor) computes those query rows only: the result is (B, H, len(rows), D_v). Differentiable.
    With `deadline` (a time.monotonic() value), raises ReferenceTimeout when it cannot finish."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, n_q, d = q.shape
    if k.shape[1] != H:
        k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))
    n_k = k.shape[2]
    allowed = allowed.to(q.device)
    if rows is not None:
        rows = rows.to(q.device)
        q = q.index_select(2, rows)
        if allowed.dim() >= 2 and allowed.shape[-2] != 1:
            allowed = allowed.index_select(allowed.dim() - 2, rows)
    keep = None if key_padding_mask is None else ~key_padding_mask.to(q.device)[:, None, None, :]
    m = q.shape[2]
    if m == 0 or n_k == 0:
        return q.new_zeros(B, H, m, v.shape[-1]) + 0 * (q.sum() + k.sum() + v.sum())
    clock = _Clock(deadline, "the float64 reference", tick)
    scale = 1.0 / math.sqrt(d)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    everything = keep is None and bool(allowed.all())
    parts = []
    for a, b in _blocks(m, B * H * n_k):
        scores = (q[:, :, a:b] @ k.transpose(-2, -1)) * scale if grad else None  # (B, H, r, n_k)
        mask = None
        if not everything:
            mask = allowed[..., a:b, :] if allowed.dim() >= 2 and allowed.shape[-2] != 1 else allowed
            if keep is not None:
                mask = mask & keep
        parts.append(_softmax_graph(scores, mask) @ v if grad else _fused(q[:, :, a:b], k, v, mask))
        clock.after(b, m)
    return torch.cat(parts, 2) if len(parts) > 1 else parts[0]


def _softmax_graph(scores, mask):
    """Masked softmax that autograd can follow; a row with no allowed key is zeros."""
    if mask is None:
        return scores.softmax(-1)
    mask = mask.expand_as(scores)
    has_key = mask.any(-1, keepdim=True)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.where(has_key, scores, torch.zeros_like(scores)).softmax(-1) * mask


def _fused(q, k, v, mask):
    """The same without a graph, through PyTorch's fused kernel in float64 (one block's memory);
    a row with no allowed key attends key 0 inside the kernel and is zeroed after it."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    has_key = mask.any(-1, keepdim=True)
    if not bool(has_key.all()):
        first = torch.zeros(mask.shape[-1], dtype=torch.bool, device=mask.device)
        first[0] = True
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask | (~has_key & first)) * has_key
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def full_reference(q, k, v, causal: bool, *, deadline=None, tick=None, one_call: bool = True) -> torch.Tensor:
    """Exact softmax attention in the inputs' dtype (SDPA): what an approximation's error is
    measured against. `one_call`: as one SDPA call (the same numbers `full` gives); otherwise in
    blocks of query rows, each checked against `deadline`."""
    gqa = q.shape[1] != k.shape[1]
    if one_call:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    n_q, n_k = q.shape[2], k.shape[2]
    clock = _Clock(deadline, "the `full` reference for the error columns", tick)
    parts = []
    blocks = _blocks(n_q, q.shape[0] * q.shape[1] * n_k)
    for a, b in blocks:
        if causal:
            keys = min(n_k, b)
            mask = torch.arange(keys, device=q.device)[None, :] <= torch.arange(a, b, device=q.device)[:, None]
            part = F.scaled_dot_product_attention(
                q[:, :, a:b], k[:, :, :keys], v[:, :, :keys], attn_mask=mask, enable_gqa=gqa
            )
        else:
            part = F.scaled_dot_product_attention(q[:, :, a:b], k, v, enable_gqa=gqa)
        parts.append(part)
        clock.after(b, n_q)
    return torch.cat(parts, 2)
