"""Longformer sliding window with global tokens (Beltagy et al. 2020, arXiv:2004.05150).

(i, j) attends when  |i - j| <= w  or  i < g  or  j < g   (docs/semantics.md; HF's
`attention_window` is the full width 2w). Cost O(n * (2w + 1 + g) + g * n).

Rows are cut into chunks of c rows; chunk rows [s, s+c) gather keys [0, g) + [s - w, s + c + w),
so every interior chunk shares one (c, g + c + 2w) mask (see `_chunked`). The g global rows form
a chunk of their own over all keys.
"""

from __future__ import annotations

import torch

from ..registry import register_attention
from . import _chunked
from .base import check_int


@register_attention("sliding_window")
class SlidingWindowAttention(_chunked.PatternAttention):
    """Longformer: |i - j| <= window, plus global tokens that attend and are attended by all."""

    complexity = "O(n·w)"

    def __init__(self, window: int = 256, global_tokens: int = 0, chunk: int = 0, backend: str = "auto"):
        super().__init__(backend)
        self.window = check_int("window", window, 0)
        self.global_tokens = check_int("global_tokens", global_tokens, 0)
        self.chunk = check_int("chunk", chunk, 0) or min(max(self.window, 32), 512)

    def pair_mask(self, i, j, causal: bool):
        w, g = self.window, self.global_tokens
        m = ((i - j).abs() <= w) | (i < g) | (j < g)
        return m & (j <= i) if causal else m

    def _plan(self, n_q: int, n_k: int, causal: bool) -> _chunked.Plan:
        w, g, c = self.window, self.global_tokens, self.chunk
        A = _chunked.arange
        chunks = []
        if g:
            chunks.append((A(0, min(g, n_q)), A(0, n_k)))
        for s in range(min(g, n_q), n_q, c):
            e = min(s + c, n_q)
            lo, hi = max(0, s - w), min(n_k, (e if causal else e + w))
            band = A(lo, max(lo, hi))
            keys = torch.cat([A(0, min(g, lo)), band]) if g else band
            if keys.numel() == 0:
                keys = A(0, 1)  # rows beyond every key (cross-attention): masked, output zeros
            chunks.append((A(s, e), keys))
        return _chunked.build_plan(chunks, lambda i, j: self.pair_mask(i, j, causal))
