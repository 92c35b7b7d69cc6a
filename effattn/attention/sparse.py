"""Sparse Transformer factorised patterns (Child et al. 2019, arXiv:1904.10509), as one softmax.

* `strided`: (i, j) attends when |i - j| < s  or  (i - j) % s == 0.   Cost O(n * (2s + n/s)).
* `fixed`:   (i, j) attends when i // s == j // s  or  j % s >= s - c.  Cost O(n * (s + n c / s)).

`fixed` runs on the chunked SDPA engine (block rows; keys = own block + summary columns).
`strided` couples a band with a residue class per row, which no shared-mask chunking covers, so
it runs as two pieces merged by log-sum-exp (`effattn.kernels.merge`): the band, chunks of rows against a
contiguous run of keys (an unfold view, one shared mask), and the residue classes, each class
i mod s one chunk of its rows against its keys. The pair (i, i) lies in both sets and is counted
in the residue piece only.
"""

from __future__ import annotations

import torch

from ..kernels import chunked
from ..kernels.caches import KVDecoding
from ..registry import register_attention
from .base import PatternAttention, check_choice, check_int


@register_attention("sparse")
class SparseAttention(KVDecoding, PatternAttention):
    """Sparse Transformer strided or fixed pattern.

    Decoding keeps every key (a later row of either pattern may attend any earlier position:
    strided reaches back by multiples of s, fixed through each block's summary columns) and a
    step reads only the keys its row attends: strided the last s and every s-th before them,
    fixed its own block and the c summary keys of each earlier block."""

    complexity = "O(n·(s + n/s))"
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = (
        {"pattern": "strided", "stride": 6},
        {"pattern": "fixed", "stride": 8, "summary": 2},
        {"pattern": "fixed", "stride": 5, "summary": 1},
    )

    def __init__(self, pattern: str = "strided", stride: int = 128, summary: int = 8, backend: str = "auto"):
        super().__init__(backend)
        self.pattern = check_choice("pattern", pattern, ("strided", "fixed"))
        self.stride = check_int("stride", stride, 1)
        # summary only shapes the fixed pattern, where it cannot exceed the block (stride)
        self.summary = check_int("summary", summary, 1, self.stride if self.pattern == "fixed" else None)
        #: rows per chunk of strided's band piece (measured at 8k: 32 rows beat 64-256, the
        #: chunk's slack outweighing the kernel's smaller query tiles)
        self.band_chunk = 32
        #: ... and when the call trains: each band key is repeated in (c + 2s) / c chunks, and the
        #: backward zero-fills and adds back a gradient per repeat (fwd+bwd at 8k: 290 ms with 128
        #: rows, 312 with 64, 372 with 32, 326 with 256)
        self.band_chunk_training = 128
        #: fixed as pieces (own block + summary columns) or one softmax per block row
        self.fixed_pieces = True
        #: rows per chunk of fixed's causal summary piece
        self.summary_rows = 1024

    def pair_mask(self, i, j, causal: bool):
        s, c = self.stride, self.summary
        if self.pattern == "strided":
            m = ((i - j).abs() < s) | ((i - j) % s == 0)
        else:
            m = (i // s == j // s) | (j % s >= s - c)
        return m & (j <= i) if causal else m

    def step_keys(self, position: int) -> torch.Tensor:
        i, s = position, self.stride
        if self.pattern == "strided":
            band = torch.arange(max(0, i - s + 1), i + 1)
            far = torch.arange(i - s, -1, -s).flip(0) if i >= s else band[:0]
            return torch.cat([far, band])
        start = i // s * s
        cols = torch.arange(0, start)
        return torch.cat([cols[cols % s >= s - self.summary], torch.arange(start, i + 1)])

    # ------------------------------------------------------------------ fixed: chunked engine
    def _plan(self, n_q: int, n_k: int, causal: bool) -> chunked.Plan:
        s, c = self.stride, self.summary
        A = chunked.arange
        summary_cols = torch.arange(n_k)[torch.arange(n_k) % s >= s - c]
        chunks = []
        for start in range(0, n_q, s):
            end = min(start + s, n_q)
            own = A(start, min(start + s, n_k)) if start < n_k else A(0, 0)
            other = summary_cols[(summary_cols < start) | (summary_cols >= start + s)]
            if causal:
                other = other[other < start]
            keys = torch.cat([other, own])
            chunks.append((A(start, end), keys if keys.numel() else A(0, 1)))
        return chunked.build_plan(chunks, lambda i, j: self.pair_mask(i, j, causal))

    def _fixed_pieces(self, n_q: int, n_k: int, causal: bool) -> list[chunked.Plan]:
        """fixed as two pieces: each block against itself (an unfold view with one shared mask),
        and the summary columns, which every row sees alike: non-causal, all rows in one long
        query block against all of them, no mask; causal, chunks of rows against the summary
        columns of the blocks before theirs. The own block's summary columns are counted in the
        summary piece (non-causal) or in the own piece (causal)."""
        s, c = self.stride, self.summary
        A = chunked.arange
        own = [(A(start, min(start + s, n_q)), A(start, min(start + s, n_k))) for start in range(0, min(n_q, n_k), s)]

        def own_mask(i, j):
            return j <= i if causal else (j % s < s - c)

        plans = []
        if not causal and c == s:
            own = []  # every column is a summary column
        if own:
            plans.append(chunked.build_plan(own, own_mask))
        cols = torch.arange(n_k)[torch.arange(n_k) % s >= s - c]
        summary = []
        R = s * max(1, self.summary_rows // s)
        if not causal and cols.numel():  # (chunks of R rows: no plan-time mask of n x n c / s)
            summary = [(A(start, min(start + R, n_q)), cols) for start in range(0, n_q, R)]
        elif causal:
            for start in range(s, n_q, R):  # block 0 sees no earlier block
                e = min(start + R, n_q)
                keys = cols[cols < (e - 1) // s * s]
                if keys.numel():
                    summary.append((A(start, e), keys))

        def summary_mask(i, j):
            return (j // s < i // s) if causal else torch.ones_like(i == j)

        if summary:
            plans.append(chunked.build_plan(summary, summary_mask))
        if not plans:  # no pair at all (n_k = 0 is answered before): one empty-row plan
            plans.append(chunked.build_plan([(A(0, n_q), A(0, 1))], lambda i, j: torch.zeros_like(i == j)))
        return plans

    # ------------------------------------------------------------------ strided: two pieces
    def _piece_plans(self, n_q: int, n_k: int, causal: bool, training: bool = False) -> list[chunked.Plan]:
        """strided: the band |i - j| < s and the residue class (i - j) % s == 0 outside it, as two
        pieces merged by log-sum-exp (`effattn.kernels.merge`). The diagonal (i, i), in both sets, is counted in
        the residue piece, so that piece needs no mask (non-causal) or SDPA's triangle (causal),
        and the band piece masks it out."""
        if self.pattern == "fixed":
            return self._fixed_pieces(n_q, n_k, causal) if self.fixed_pieces else [self._plan(n_q, n_k, causal)]
        s, c = self.stride, (self.band_chunk_training if training else self.band_chunk)
        A = chunked.arange
        band = []
        for start in range(0, n_q, c):
            e = min(start + c, n_q)
            lo, hi = max(0, start - s + 1), min(n_k, e if causal else e + s - 1)
            keys = A(lo, hi) if lo < hi else A(0, 1)  # rows past every key: masked, output zeros
            band.append((A(start, e), keys))

        def band_mask(i, j):
            m = ((i - j).abs() < s) & (i != j)
            return m & (j < i) if causal else m

        residue = []
        for r in range(min(s, n_q, n_k)):
            rows, keys = torch.arange(r, n_q, s), torch.arange(r, n_k, s)
            residue.append((rows, keys))

        def residue_mask(i, j):  # same residue by construction
            return j <= i if causal else torch.ones_like(i == j)

        return [chunked.build_plan(band, band_mask), chunked.build_plan(residue, residue_mask)]

    def _chunked(self, q, k, v, causal, key_padding_mask):
        out = super()._chunked(q, k, v, causal, key_padding_mask)
        if self.pattern == "strided":
            self.last_backend = "band+residue pieces"
        return out
