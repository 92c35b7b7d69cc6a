"""Linformer (Wang et al. 2020, arXiv:2006.04768).

Keys and values are projected along the sequence to length k by learned (max_len, k) matrices
E and F, sliced to the first n rows:  out = softmax(Q (E_n^T K)^T / sqrt(d)) (F_n^T V).
O(n k). Causal masking is impossible (every projected key mixes all positions): refused.
Padding: padded keys and values are zeroed before the projection, so they contribute nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedError
from ..registry import register_attention
from .base import AttentionBase, check_int


@register_attention("linformer")
class LinformerAttention(AttentionBase):
    """Linformer: learned low-rank projection of keys and values along the sequence."""

    exact = False
    complexity = "O(n·k)"
    supports_causal = False
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"proj_len": 16, "max_len": 512},)

    def __init__(self, proj_len: int = 256, max_len: int = 16384):
        super().__init__()
        self.proj_len = check_int("proj_len", proj_len, 1)
        self.max_len = check_int("max_len", max_len, 1)
        self.E = nn.Parameter(torch.randn(max_len, proj_len) / proj_len**0.5)
        self.F = nn.Parameter(torch.randn(max_len, proj_len) / proj_len**0.5)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        n = k.shape[2]
        if n > self.max_len:
            raise UnsupportedError(f"linformer: sequence length {n} exceeds max_len={self.max_len}")
        self.last_backend = "projected-sdpa"
        if key_padding_mask is not None:
            keep = (~key_padding_mask)[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        kp = torch.einsum("bhnd,nk->bhkd", k, self.E[:n].to(k.dtype))  # (B, H, k, D)
        vp = torch.einsum("bhnd,nk->bhkd", v, self.F[:n].to(v.dtype))
        return F.scaled_dot_product_attention(q, kp, vp)

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """Forward matmul FLOPs: keys and values projected to proj_len k (2·n·k·D each), then
        softmax attention of n_q queries over k keys (4·n_q·k·D)."""
        P = min(self.proj_len, self.max_len)
        return batch * (kv_heads * 2 * 2 * n_k * P * head_dim + heads * 4 * n_q * P * head_dim)
