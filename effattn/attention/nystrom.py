"""Nystromformer (Xiong et al. 2021, arXiv:2102.03902).

With L segment-mean landmarks Q~, K~ (contiguous segments of nearly equal length):
out = softmax(Q K~^T / sqrt d) pinv(softmax(Q~ K~^T / sqrt d)) softmax(Q~ K^T / sqrt d) V,
the pseudo-inverse by Newton-Schulz iterations (Razavi et al. 2014), as in the paper. O(n L).
Non-causal, self- or cross-attention; no padding mask (refused).
"""

from __future__ import annotations

import torch

from ..registry import register_attention
from .base import AttentionBase, check_int


def segment_means(x: torch.Tensor, L: int) -> torch.Tensor:
    """(B, H, n, D) -> (B, H, L, D), means over contiguous segments of nearly equal length."""
    n = x.shape[2]
    seg = (torch.arange(n, device=x.device) * L) // n  # segment of each position
    onehot = torch.zeros(L, n, device=x.device, dtype=x.dtype)
    onehot[seg, torch.arange(n, device=x.device)] = 1.0  # (L, n): O(n L), not n x n
    return (onehot / onehot.sum(1, keepdim=True)) @ x


def newton_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    z = a.transpose(-1, -2) / (a.abs().sum(-1).amax(-1) * a.abs().sum(-2).amax(-1))[..., None, None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


@register_attention("nystrom")
class NystromAttention(AttentionBase):
    """Nystromformer: landmark (segment-mean) approximation of the softmax matrix."""

    exact = False
    complexity = "O(n·L)"
    supports_causal = False
    supports_padding = False
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"num_landmarks": 8},)

    def __init__(self, num_landmarks: int = 64, pinv_iterations: int = 6):
        super().__init__()
        self.num_landmarks = check_int("num_landmarks", num_landmarks, 1)
        self.pinv_iterations = check_int("pinv_iterations", pinv_iterations, 1)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "landmarks"
        scale = q.shape[-1] ** -0.5
        L = min(self.num_landmarks, q.shape[2], k.shape[2])
        lq, lk = segment_means(q, L), segment_means(k, L)
        k1 = (q @ lk.transpose(-1, -2) * scale).softmax(-1)  # (B, H, n_q, L)
        k2 = (lq @ lk.transpose(-1, -2) * scale).softmax(-1)  # (B, H, L, L)
        k3 = (lq @ k.transpose(-1, -2) * scale).softmax(-1)  # (B, H, L, n_k)
        return k1 @ (newton_pinv(k2, self.pinv_iterations) @ (k3 @ v))

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """Forward matmul FLOPs with L landmarks: the segment means (an (L, n) matrix times x, for
        q and k), the three kernels' scores, 4 L x L x L products per Newton iteration, and the
        three products that apply them to V."""
        L, D = min(self.num_landmarks, n_q, n_k), head_dim
        means = 2 * L * D * (n_q + n_k)
        scores = 2 * D * (n_q * L + L * L + L * n_k)
        pinv = self.pinv_iterations * 4 * 2 * L**3
        apply = 2 * D * (L * n_k + L * L + n_q * L)
        return batch * heads * (means + scores + pinv + apply)
