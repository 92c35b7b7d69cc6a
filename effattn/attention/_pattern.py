"""The base of the exact pattern plugins: a pattern stated as `pair_mask`, laid out as chunk plans
for the plain-PyTorch engine (`_chunked`), merged by log-sum-exp where it is cut into pieces
(`_merge`), or handed to FlexAttention or a dense mask (the backends)."""

from __future__ import annotations

import torch

from ..errors import UnsupportedError
from . import _merge
from ._chunked import Plan, PlanCache, _folds, run_plan
from .base import AttentionBase, check_choice, combine_masks
from .full import dense_attention

BACKENDS = ("auto", "chunked", "dense", "flex")
#: the chunked backend runs a pattern as ONE masked SDPA call over its dense (n_q, n_k) mask when
#: its chunks would compute at least this fraction of all n_q x n_k pairs anyway (short sequences,
#: where a window covers nearly every pair and the chunks' extra calls are the cost: fwd+bwd of
#: sliding_window(64) at n = 128, batch 32, took 1.8x as long as full), and the mask has at most
#: DENSE_MAX_PAIRS elements. None: never (tests that exercise the chunk paths at small n).
DENSE_ABOVE: float | None = 0.5
DENSE_MAX_PAIRS = 1 << 22
#: what FlexAttention's Triton kernels compile for (float64 fails inside Triton's dot: found on an H200)
FLEX_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class PatternAttention(AttentionBase):
    """Base of the exact pattern plugins: `pair_mask(i, j, causal)` states the pattern, `_plan`
    lays out chunks for the engine.

    backend: `chunked` (plain PyTorch; forward and backward everywhere), `flex` (compiled
    FlexAttention; CUDA forward+backward, CPU forward only), `dense` (masked SDPA over
    `dense_mask`: the labelled simulated-sparsity baseline, O(n^2)), `auto` (flex on CUDA, chunked
    on CPU, where flex compiles for seconds per shape and has no backward; chunked for float64 on
    CUDA, which FlexAttention's kernels do not take)."""

    complexity = "O(nnz)"
    supports_gqa = True

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = check_choice("backend", backend, BACKENDS)
        self._plans = PlanCache(self._piece_plans)
        self._flex_masks: dict = {}
        self._dense_masks: dict = {}

    def pair_mask(self, i, j, causal: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def _plan(self, n_q: int, n_k: int, causal: bool) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def _piece_plans(self, n_q: int, n_k: int, causal: bool, training: bool = False) -> list[Plan]:
        """The pattern as plans whose pairs are disjoint per row, merged by log-sum-exp
        (`_merge`); one plan (one softmax per chunk, no merge) unless a plugin cuts it. A plugin
        may lay out a call that needs gradients (`training`) differently: the backward pays for
        every key a chunk repeats (its gradient is zero-filled and added back per chunk)."""
        return [self._plan(n_q, n_k, causal)]

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        return self.pair_mask(torch.arange(n_q)[:, None], torch.arange(n_k)[None, :], causal)

    def _chunked(self, q, k, v, causal, key_padding_mask):
        n_q, n_k = q.shape[2], k.shape[2]
        training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        plans = self._plans(n_q, n_k, causal, training)
        if DENSE_ABOVE is not None and n_q * n_k <= DENSE_MAX_PAIRS:
            if sum(p.computed_pairs for p in plans) >= DENSE_ABOVE * n_q * n_k:
                self.last_backend = "chunked (as one dense call: the chunks cover most pairs)"
                key = (n_q, n_k, causal, str(q.device))
                if key not in self._dense_masks:
                    if len(self._dense_masks) >= 4:
                        self._dense_masks.pop(next(iter(self._dense_masks)))
                    self._dense_masks[key] = self.dense_mask(n_q, n_k, causal).to(q.device)
                return dense_attention(q, k, v, combine_masks(self._dense_masks[key], key_padding_mask))
        B, H = q.shape[:2]
        if len(plans) == 1 and not (_merge.kernel_ok(q) and not any(_folds(g, B, H) for g in plans[0].groups)):
            self.last_backend = "chunked-sdpa"
            return run_plan(plans[0], q, k, v, key_padding_mask)
        if len(plans) == 1:
            # one plan through the flash kernel with the merge module's backward, which adds each
            # group's gradient straight into dq, dk, dv: autograd's backward of the per-element
            # selects, slices and unfold views zero-filled a full-size tensor for each (33 fills,
            # a third of a window's fwd+bwd at 8k)
            self.last_backend = "chunked-flash"
            return _merge.run_pieces(plans, q, k, v, key_padding_mask)
        self.last_backend = "chunked-pieces"
        return _merge.run_pieces(plans, q, k, v, key_padding_mask)

    def _flex_pair_mask(self, n_q: int, n_k: int, causal: bool, device):
        return lambda i, j: self.pair_mask(i, j, causal)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        backend = self.backend
        if backend == "auto":
            from ._flex import flex_available

            backend = (
                "flex"
                if q.device.type == "cuda" and q.dtype in FLEX_CUDA_DTYPES and flex_available() is None
                else "chunked"
            )
        if backend == "flex":
            if q.device.type == "cuda" and q.dtype not in FLEX_CUDA_DTYPES:
                raise UnsupportedError(
                    f"backend 'flex': FlexAttention's CUDA kernels take float16, bfloat16 and "
                    f"float32, not {str(q.dtype).replace('torch.', '')}; use backend='chunked'"
                )
            from ._flex import flex_forward

            self.last_backend = "flex"
            pm = self._flex_pair_mask(q.shape[2], k.shape[2], causal, q.device)
            return flex_forward(pm, q, k, v, causal, key_padding_mask, self._flex_masks)
        if backend == "dense":
            self.last_backend = "dense (simulated sparsity)"
            pattern = self.dense_mask(q.shape[2], k.shape[2], causal).to(q.device)
            return dense_attention(q, k, v, combine_masks(pattern, key_padding_mask))
        return self._chunked(q, k, v, causal, key_padding_mask)

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        """Attended pairs, from the plan (no n x n mask)."""
        if n_q == 0 or n_k == 0:
            return 0
        return sum(p.pairs for p in self._plans(n_q, n_k, causal))

    def min_memory_bytes(self, batch, heads, n_q, n_k, head_dim, element_size, causal, grad) -> int:
        """The `dense` backend builds the (n_q, n_k) boolean pattern; the others stay O(nnz)."""
        return n_q * n_k if self.backend == "dense" else 0
