"""Exact softmax attention, `softmax(Q K^T / sqrt(d)) V` (Vaswani et al. 2017), in two forms:

* `full`  - PyTorch's fused `scaled_dot_product_attention` (flash/memory-efficient kernels);
* `naive` - the textbook computation that materialises the n_q x n_k score matrix, kept as the
  honest O(n^2)-memory baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.caches import KVDecoding
from ..kernels.masks import causal_mask, combine_masks, dense_attention, dense_pairs, guard_empty_rows, softmax_scale
from ..registry import register_attention
from .base import AttentionBase


def grouped(q, k, v):
    """Grouped-query heads without copying k, v: q (B, H, n, D) -> (B, K, H/K, n, D) and k, v
    (B, K, n, D) -> (B, K, 1, n, D), so that matmuls broadcast each key/value head over its group.
    Returns (q5, k5, v5, unflatten) where unflatten maps a (B, K, G, n, Dv) result back."""
    B, H, n, D = q.shape
    K = k.shape[1]
    return q.view(B, K, H // K, n, D), k.unsqueeze(2), v.unsqueeze(2), lambda x: x.reshape(B, H, n, x.shape[-1])


@register_attention("full")
class FullAttention(KVDecoding, AttentionBase):
    """Exact softmax attention through PyTorch SDPA."""

    complexity = "O(n^2)"
    supports_gqa = True

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        return causal_mask(n_q, n_k) if causal else torch.ones(n_q, n_k, dtype=torch.bool)

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        return dense_pairs(n_q, n_k, causal)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "sdpa"
        if key_padding_mask is None:
            # is_causal lets SDPA skip the masked half instead of reading a mask tensor.
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
        pattern = causal_mask(q.shape[2], k.shape[2], q.device) if causal else None
        return dense_attention(q, k, v, combine_masks(pattern, key_padding_mask))


@register_attention("naive")
class NaiveAttention(KVDecoding, AttentionBase):
    """Textbook softmax(QK^T/sqrt(d))V, materialising the n x n matrix."""

    complexity = "O(n^2)"
    supports_gqa = True

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        return causal_mask(n_q, n_k) if causal else torch.ones(n_q, n_k, dtype=torch.bool)

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        return dense_pairs(n_q, n_k, causal)

    def min_memory_bytes(self, batch, heads, n_q, n_k, head_dim, element_size, causal, grad) -> int:
        """The score matrix and its softmax are alive together: 2 x (B, H, n_q, n_k). (In decoding
        a step holds one row per head: the KV cache is the cost, counted by the caller.)"""
        return 2 * batch * heads * n_q * n_k * element_size

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "matmul-softmax"
        q5, k5, v5, back = grouped(q, k, v)  # (B, K, G, n, D): a group's heads share k, v
        scores = (q5 @ k5.transpose(-2, -1)) * softmax_scale(q.shape[-1])  # (B, K, G, n_q, n_k)
        pattern = causal_mask(q.shape[2], k.shape[2], q.device) if causal else None
        mask = combine_masks(pattern, key_padding_mask)
        if mask is None:
            return back(scores.softmax(-1) @ v5)
        if mask.dim() == 4:  # (B, 1, n_q, n_k) with padding -> (B, 1, 1, n_q, n_k)
            mask = mask.unsqueeze(1)
        mask, row_keep = guard_empty_rows(mask)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        if row_keep is not None:
            probs = probs * row_keep
        return back(probs @ v5)
