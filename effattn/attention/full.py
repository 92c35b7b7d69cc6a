"""Exact softmax attention, `softmax(Q K^T / sqrt(d)) V` (Vaswani et al. 2017), in two forms:

* `full`  - PyTorch's fused `scaled_dot_product_attention` (flash/memory-efficient kernels);
* `naive` - the textbook computation that materialises the n_q x n_k score matrix, kept as the
  honest O(n^2)-memory baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_attention
from .base import AttentionBase, causal_mask, combine_masks, dense_pairs, guard_empty_rows, softmax_scale


def dense_attention(q, k, v, mask, scale=None):
    """SDPA with a boolean mask (True attends), zeros for rows with no key."""
    mask, row_keep = guard_empty_rows(mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out if row_keep is None else out * row_keep


@register_attention("full")
class FullAttention(AttentionBase):
    """Exact softmax attention through PyTorch SDPA."""

    complexity = "O(n^2)"

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
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        pattern = causal_mask(q.shape[2], k.shape[2], q.device) if causal else None
        return dense_attention(q, k, v, combine_masks(pattern, key_padding_mask))


@register_attention("naive")
class NaiveAttention(AttentionBase):
    """Textbook softmax(QK^T/sqrt(d))V, materialising the n x n matrix."""

    complexity = "O(n^2)"

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        return causal_mask(n_q, n_k) if causal else torch.ones(n_q, n_k, dtype=torch.bool)

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        return dense_pairs(n_q, n_k, causal)

    def min_memory_bytes(self, batch, heads, n_q, n_k, head_dim, element_size, causal, grad) -> int:
        """The score matrix and its softmax are alive together: 2 x (B, H, n_q, n_k)."""
        return 2 * batch * heads * n_q * n_k * element_size

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "matmul-softmax"
        scores = (q @ k.transpose(-2, -1)) * softmax_scale(q.shape[-1])  # (B, H, n_q, n_k)
        pattern = causal_mask(q.shape[2], k.shape[2], q.device) if causal else None
        mask = combine_masks(pattern, key_padding_mask)
        if mask is None:
            return scores.softmax(-1) @ v
        mask, row_keep = guard_empty_rows(mask)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        if row_keep is not None:
            probs = probs * row_keep
        return probs @ v
