"""xFormers `memory_efficient_attention` (Lefaudeux et al., facebookresearch/xformers) on CUDA.

Exact softmax attention; causal through `LowerTriangularMask` (top-left aligned, as docs/semantics.md);
a local window `window=w` (|i - j| <= w, as `sliding_window` without globals) through
`LocalAttentionFromBottomRightMask(window_left=w, window_right=w, or 0 when causal)`, which for
n_q == n_k is exactly that band; padding, and windows with n_q != n_k (where xFormers' bottom-right
alignment differs from the top-left one of docs/semantics.md), through an explicit additive bias.
Its kernels need CUDA: elsewhere it is listed as unavailable with the reason, and never imported.
"""

from __future__ import annotations

import torch

from ...errors import UnsupportedError
from ...kernels.masks import band_pairs, causal_mask, dense_pairs, guard_empty_rows
from ...registry import register_attention
from ..base import AttentionBase, check_int


@register_attention("xformers")
class XFormersAttention(AttentionBase):
    """xFormers memory-efficient exact attention (CUDA only)."""

    complexity = "O(n^2)"
    devices = ("cuda",)
    dtypes = ("float32", "bfloat16", "float16")
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"window": 5},)

    def __init__(self, window: int = -1):
        super().__init__()
        self.window = check_int("window", window, -1)  # -1: full attention

    @staticmethod
    def availability(device: str = "cuda") -> str | None:
        if device != "cuda" or not torch.cuda.is_available():
            return "unavailable: needs CUDA"
        try:
            import xformers.ops  # noqa: F401 - importing it is the check
        except Exception as e:  # noqa: BLE001 - any import failure makes it unavailable, with the reason
            return f"unavailable: xformers not importable ({type(e).__name__}: {e}); pip install 'effattn[xformers]'"
        return None

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        m = causal_mask(n_q, n_k) if causal else torch.ones(n_q, n_k, dtype=torch.bool)
        if self.window >= 0:
            i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
            m = m & ((i - j).abs() <= self.window)
        return m

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        if self.window < 0:
            return dense_pairs(n_q, n_k, causal)
        return band_pairs(n_q, n_k, self.window, causal)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        why = self.availability(q.device.type)
        if why:
            raise UnsupportedError(f"xformers: {why}")
        import xformers.ops as xops

        self.last_backend = "xformers-cutlass"
        qx, kx, vx = (t.transpose(1, 2) for t in (q, k, v))  # (B, n, H, D)
        B, H, n_q, n_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        # xFormers' local masks align bottom-right: they match docs/semantics.md only when n_q == n_k.
        # Other cases (padding, or a window with n_q != n_k) take an explicit bias tensor.
        if key_padding_mask is None and (self.window < 0 or n_q == n_k):
            if self.window >= 0:
                from xformers.ops.fmha.attn_bias import LocalAttentionFromBottomRightMask

                bias = LocalAttentionFromBottomRightMask(
                    window_left=self.window, window_right=0 if causal else self.window
                )
            else:
                bias = xops.LowerTriangularMask() if causal else None
            return xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias).transpose(1, 2)
        allowed = self.dense_mask(n_q, n_k, causal).to(q.device)[None, None]
        if key_padding_mask is not None:
            allowed = allowed & ~key_padding_mask[:, None, None, :]
        allowed, row_keep = guard_empty_rows(allowed.expand(B, H, n_q, n_k))
        # xFormers wants the bias's last dim aligned to 8 elements: allocate wider, then slice.
        pad = -(-n_k // 8) * 8
        bias = torch.zeros(B, H, n_q, pad, device=q.device, dtype=q.dtype)[..., :n_k]
        bias.masked_fill_(~allowed, float("-inf"))
        out = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias).transpose(1, 2)
        return out if row_keep is None else out * row_keep.to(out.dtype)
