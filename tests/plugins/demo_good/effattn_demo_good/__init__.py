"""A third-party plugin as an author would ship it: one class, found through the entry point
`effattn.attention`. It also carries the decorator, so effattn meets it twice (allowed).

It attends a window of `k` keys on either side, an exact pattern checked by the suite.
"""

import torch
import torch.nn.functional as F

import effattn


@effattn.register_attention("demo_window")
class WindowAttention(torch.nn.Module):
    exact = True
    complexity = "O(n^2)"
    supports_causal = True
    wraps = ("einops",)  # (as a wrapper would name the library it wraps; its version is recorded)

    def __init__(self, k: int = 4):
        super().__init__()
        if k < 1:
            raise ValueError(f"option k must be >= 1, got {k}")
        self.k = k

    def dense_mask(self, n_q, n_k, causal=False):
        i = torch.arange(n_q)[:, None]
        j = torch.arange(n_k)[None, :]
        m = (i - j).abs() <= self.k
        return m & (j <= i) if causal else m

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        m = self.dense_mask(q.shape[2], k.shape[2], causal).to(q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)
