"""Longformer sliding window with global tokens (Beltagy et al. 2020, arXiv:2004.05150), and the
same window with attention sinks (StreamingLLM, Xiao et al. 2023, arXiv:2309.17453).

`sliding_window`: (i, j) attends when  |i - j| <= w  or  i < g  or  j < g   (docs/semantics.md;
HF's `attention_window` is the full width 2w). Cost O(n * (2w + 1 + g) + g * n).
`sliding_window_sinks`: (i, j) attends when  |i - j| <= w  or  j < s: the first s keys are seen by
every query, but sink rows see only their window and the sinks (not everything, as global rows do).

Rows are cut into chunks of c rows; chunk rows [s, s+c) gather keys [0, g) + [s - w, s + c + w),
so every interior chunk shares one (c, g + c + 2w) mask (see `effattn.kernels.chunked`). The g global rows form
a chunk of their own over all keys.

Decoding keeps the first g (or s) tokens and a ring of the last w + 1: a cache of constant size,
2·B·K·(w + 1 + g)·D·e bytes. Causal rows i < g see only j <= i < g, so under causal masking the
two variants differ in nothing but their names and options.
"""

from __future__ import annotations

import torch

from ..kernels import chunked
from ..kernels.caches import RingCache, attend, check_step, expand_padding
from ..registry import register_attention
from .base import PatternAttention, check_int


def default_chunk(window: int) -> int:
    """Rows per chunk: 3/4 of the window (a multiple of 16, 32 to 512). A chunk of c rows computes
    c + 2w keys for 2w + 1 useful ones, while the CPU kernel runs small query blocks less well;
    measured at 8k, 2 threads: 192 rows beat 160, 224 and 256 for w = 256 (92 against 85-87
    GFLOP/s), 384 beat 512 for w = 512 and 96 beat 128 for w = 128, each by 6-9%."""
    return min(max(32, (3 * window // 4) // 16 * 16), 512)


class _WindowDecoding:
    """Decoding for a window of w plus `fixed` always-seen first tokens, from a `RingCache`."""

    supports_decode = True
    window: int

    def _fixed(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_cache(self, batch, heads, head_dim, dtype=torch.float32, device="cpu", max_len: int = 0):
        return RingCache(batch, heads, head_dim, dtype, device, fixed=self._fixed(), ring=self.window + 1)

    def prefill(self, cache, q, k, v, key_padding_mask=None):
        out = self(q, k, v, causal=True, key_padding_mask=key_padding_mask)
        cache.write(k, v, expand_padding(key_padding_mask, k.shape[0], k.shape[2], k.device))
        return out

    def step(self, cache, q, k, v):
        check_step(q, k, v)
        cache.write(k, v)
        keep = cache.valid(cache.length - 1, self.window)  # (slots,) or None
        if cache.keep is not None:
            keep = cache.keep if keep is None else cache.keep & keep
        elif keep is not None:
            keep = keep.expand(q.shape[0], -1)
        B, H, _, D = q.shape
        slots = cache.k.shape[2] if keep is None else None
        used = slots if slots is not None else int(keep[0].sum())
        cache.last_read_bytes = 2 * B * k.shape[1] * cache.k.shape[2] * D * cache.k.element_size()
        cache.last_flops = 4 * B * H * used * D
        return attend(q, cache.k, cache.v, keep)


@register_attention("sliding_window")
class SlidingWindowAttention(_WindowDecoding, PatternAttention):
    """Longformer: |i - j| <= window, plus global tokens that attend and are attended by all."""

    complexity = "O(n·w)"
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"window": 5}, {"window": 4, "global_tokens": 3}, {"window": 0})

    def __init__(self, window: int = 256, global_tokens: int = 0, chunk: int = 0, backend: str = "auto"):
        super().__init__(backend)
        self.window = check_int("window", window, 0)
        self.global_tokens = check_int("global_tokens", global_tokens, 0)
        self.chunk = check_int("chunk", chunk, 0) or default_chunk(self.window)

    def _fixed(self) -> int:
        return self.global_tokens

    def pair_mask(self, i, j, causal: bool):
        w, g = self.window, self.global_tokens
        m = ((i - j).abs() <= w) | (i < g) | (j < g)
        return m & (j <= i) if causal else m

    def _plan(self, n_q: int, n_k: int, causal: bool) -> chunked.Plan:
        return _window_plan(self, n_q, n_k, causal, self.global_tokens, global_rows=True)


@register_attention("sliding_window_sinks")
class SinkWindowAttention(_WindowDecoding, PatternAttention):
    """StreamingLLM: |i - j| <= window, plus the first `sinks` keys, seen by every query."""

    complexity = "O(n·w)"
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"window": 5, "sinks": 2},)

    def __init__(self, window: int = 256, sinks: int = 4, chunk: int = 0, backend: str = "auto"):
        super().__init__(backend)
        self.window = check_int("window", window, 0)
        self.sinks = check_int("sinks", sinks, 0)
        self.chunk = check_int("chunk", chunk, 0) or default_chunk(self.window)

    def _fixed(self) -> int:
        return self.sinks

    def pair_mask(self, i, j, causal: bool):
        m = ((i - j).abs() <= self.window) | (j < self.sinks)
        return m & (j <= i) if causal else m

    def _plan(self, n_q: int, n_k: int, causal: bool) -> chunked.Plan:
        return _window_plan(self, n_q, n_k, causal, self.sinks, global_rows=False)


def _window_plan(attn, n_q: int, n_k: int, causal: bool, g: int, global_rows: bool) -> chunked.Plan:
    """Chunks of c rows over keys [0, g) + [s - w, s + c + w); with `global_rows` the first g
    rows form a chunk of their own over all keys."""
    w, c = attn.window, attn.chunk
    A = chunked.arange
    chunks = []
    first = min(g, n_q) if global_rows else 0
    if global_rows and g:
        chunks.append((A(0, first), A(0, n_k)))
    for s in range(first, n_q, c):
        e = min(s + c, n_q)
        lo, hi = max(0, s - w), min(n_k, (e if causal else e + w))
        band = A(lo, max(lo, hi))
        keys = torch.cat([A(0, min(g, lo)), band]) if g else band
        if keys.numel() == 0:
            keys = A(0, 1)  # rows beyond every key (cross-attention): masked, output zeros
        chunks.append((A(s, e), keys))
    return chunked.build_plan(chunks, lambda i, j: attn.pair_mask(i, j, causal))
