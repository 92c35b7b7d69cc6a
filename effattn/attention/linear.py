"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236).

phi(x) = elu(x) + 1;  out_i = phi(q_i)^T S / (phi(q_i)^T z + eps),  S = sum_j phi(k_j) v_j^T,
z = sum_j phi(k_j) over attended j (all j, or j <= i when causal). No 1/sqrt(d).

Non-causal is O(n d^2). Causal is chunked: quadratic inside a chunk of C rows, with one d x d
state per chunk (exclusive prefix sum over chunks) - never the cumulative sum that keeps a d x d
state for every position, which at n = 16k, 8 heads, d = 64 would hold 2 GiB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_attention
from .base import AttentionBase, check_float, check_int


def linear_attention(fq, fk, v, causal: bool, key_padding_mask=None, eps: float = 1e-6, chunk: int = 64):
    """fq (B,H,n_q,F), fk (B,H,n_k,F) non-negative features; v (B,H,n_k,Dv). `eps` is a number,
    or a (B,H,n_q) tensor with one per query row (for features scaled by a constant per row)."""
    if key_padding_mask is not None:
        fk = fk * (~key_padding_mask)[:, None, :, None].to(fk.dtype)  # padded keys add nothing
    if not causal:
        S = fk.transpose(-1, -2) @ v  # (B, H, F, Dv)
        z = fk.sum(2)  # (B, H, F)
        return (fq @ S) / ((fq @ z[..., None]) + (eps[..., None] if torch.is_tensor(eps) else eps))
    B, H, n_q, Fd = fq.shape
    n_k = fk.shape[2]
    N = -(-max(n_q, n_k) // chunk) * chunk
    m = N // chunk
    fq = F.pad(fq, (0, 0, 0, N - n_q)).view(B, H, m, chunk, Fd)
    fk = F.pad(fk, (0, 0, 0, N - n_k)).view(B, H, m, chunk, Fd)  # padded keys: phi = 0
    vv = F.pad(v, (0, 0, 0, N - n_k)).view(B, H, m, chunk, -1)
    kv = fk.transpose(-1, -2) @ vv  # (B, H, m, F, Dv): one state per chunk
    S_prev = kv.cumsum(2) - kv  # exclusive prefix over chunks
    z_prev = fk.sum(3).cumsum(2) - fk.sum(3)  # (B, H, m, F)
    tri = torch.ones(chunk, chunk, dtype=torch.bool, device=fq.device).tril()
    A = (fq @ fk.transpose(-1, -2)) * tri  # (B, H, m, C, C) inside the chunk
    num = A @ vv + fq @ S_prev
    den = A.sum(-1) + (fq @ z_prev[..., None])[..., 0]
    if torch.is_tensor(eps):  # (the rows padded up to the chunk get 1: no 0/0 in the backward)
        eps = F.pad(eps, (0, N - n_q), value=1.0).view(B, H, m, chunk)[..., None]
    out = num / (den[..., None] + eps)
    return out.reshape(B, H, N, -1)[:, :, :n_q]


@register_attention("linear")
class LinearAttention(AttentionBase):
    """Linear transformer: elu(x)+1 feature map, O(n) time and memory."""

    exact = False
    complexity = "O(n)"

    def __init__(self, eps: float = 1e-6, chunk: int = 64):
        super().__init__()
        self.eps = check_float("eps", eps, 0.0, lo_open=True)
        self.chunk = check_int("chunk", chunk, 1)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "chunked-causal" if causal else "global-state"
        return linear_attention(F.elu(q) + 1, F.elu(k) + 1, v, causal, key_padding_mask, self.eps, self.chunk)
