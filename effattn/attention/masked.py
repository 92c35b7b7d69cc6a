"""Masked self-attention: the decoder's look-ahead mask (Vaswani et al. 2017, section 3.2.3).

(i, j) attends when `j <= i`, always, whatever `causal` says: this is the attention a decoder
block uses, exposed as its own variant so that it can be benchmarked against `full` causal.
"""

from __future__ import annotations

import torch

from ..kernels.caches import KVDecoding
from ..kernels.masks import causal_mask, combine_masks, dense_attention, dense_pairs
from ..registry import register_attention
from .base import AttentionBase


@register_attention("masked")
class MaskedAttention(KVDecoding, AttentionBase):
    """Decoder look-ahead masked softmax attention (j <= i always)."""

    complexity = "O(n^2)"
    supports_gqa = True

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        return causal_mask(n_q, n_k)

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        return dense_pairs(n_q, n_k, True)  # j <= i whatever `causal` says

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "sdpa"
        if key_padding_mask is None:
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1]
            )
        mask = combine_masks(causal_mask(q.shape[2], k.shape[2], q.device), key_padding_mask)
        return dense_attention(q, k, v, mask)
