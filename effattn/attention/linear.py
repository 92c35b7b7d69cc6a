"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236).

phi(x) = elu(x) + 1;  out_i = phi(q_i)^T S / (phi(q_i)^T z + eps),  S = sum_j phi(k_j) v_j^T,
z = sum_j phi(k_j) over attended j (all j, or j <= i when causal). No 1/sqrt(d).

Non-causal is O(n d^2). Causal is chunked: quadratic inside a chunk of C rows, with one d x d
state per chunk (exclusive prefix sum over chunks) - never the cumulative sum that keeps a d x d
state for every position, which at n = 16k, 8 heads, d = 64 would hold 2 GiB.

Decoding is the recurrent form: S and z are the state, updated by each token and read by its
query - F·(D + 1) numbers per key/value head, whatever the context length. Grouped-query heads
share their key/value head's S and z (the query heads of a group broadcast over one state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.caches import check_step
from ..registry import register_attention
from .base import AttentionBase, check_float, check_int


def phi(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1, with the + 1 in place: one pass and one allocation fewer. (ELU's backward reads
    its input, not its output, so the in-place add leaves autograd intact.) At 8k, 8 heads, the
    feature map was 22 of linear's 38 ms: elementwise and memory-bound, the cost to cut."""
    return F.elu(x).add_(1)


def linear_flops(B: int, H: int, K: int, n_q: int, n_k: int, Fd: int, Dv: int, causal: bool, chunk: int) -> int:
    """The matmul FLOPs (2 per multiply-add) of `linear_attention` as computed below, with
    elementwise work (feature maps, division) left out. Non-causal: S = phi(K)^T V and z per key/value
    head, phi(Q) S and phi(Q) z per query head. Causal, over N = n padded to the chunk C: each
    chunk's state per key/value head, and per query head the C x C scores inside the chunk, their
    product with V, and the read of the state carried in."""
    if not causal:
        return B * (K * (2 * n_k * Fd * Dv + n_k * Fd) + H * (2 * n_q * Fd * Dv + 2 * n_q * Fd))
    N = -(-max(n_q, n_k) // chunk) * chunk
    return B * (K * (2 * N * Fd * Dv + N * Fd) + H * (2 * N * chunk * (Fd + Dv) + 2 * N * Fd * Dv + 2 * N * Fd))


def linear_attention(fq, fk, v, causal: bool, key_padding_mask=None, eps: float = 1e-6, chunk: int = 64):
    """fq (B,H,n_q,F), fk (B,K,n_k,F) non-negative features (K divides H: grouped-query heads);
    v (B,K,n_k,Dv). `eps` is a number, or a (B,H,n_q) tensor with one per query row (for features
    scaled by a constant per row)."""
    B, H, n_q, Fd = fq.shape
    K, n_k = fk.shape[1], fk.shape[2]
    G = H // K
    if key_padding_mask is not None:
        fk = fk * (~key_padding_mask)[:, None, :, None].to(fk.dtype)  # padded keys add nothing
    fq = fq.view(B, K, G, n_q, Fd)  # a group's query heads broadcast over one key/value head
    fk, v = fk.unsqueeze(2), v.unsqueeze(2)  # (B, K, 1, n_k, .)
    if torch.is_tensor(eps):
        eps = eps.reshape(B, K, G, n_q)
    if not causal:
        S = fk.transpose(-1, -2) @ v  # (B, K, 1, F, Dv)
        z = fk.sum(-2)  # (B, K, 1, F)
        out = (fq @ S) / ((fq @ z[..., None]) + (eps[..., None] if torch.is_tensor(eps) else eps))
        return out.reshape(B, H, n_q, -1)
    N = -(-max(n_q, n_k) // chunk) * chunk
    m = N // chunk
    fq = F.pad(fq, (0, 0, 0, N - n_q)).unflatten(-2, (m, chunk))  # (B, K, G, m, C, F)
    fk = F.pad(fk, (0, 0, 0, N - n_k)).unflatten(-2, (m, chunk))  # padded keys: phi = 0
    vv = F.pad(v, (0, 0, 0, N - n_k)).unflatten(-2, (m, chunk))
    kv = fk.transpose(-1, -2) @ vv  # (B, K, 1, m, F, Dv): one state per chunk
    S_prev = kv.cumsum(-3) - kv  # exclusive prefix over chunks
    zc = fk.sum(-2)  # (B, K, 1, m, F)
    z_prev = zc.cumsum(-2) - zc
    tri = torch.ones(chunk, chunk, dtype=torch.bool, device=fq.device).tril()
    A = (fq @ fk.transpose(-1, -2)) * tri  # (B, K, G, m, C, C) inside the chunk
    num = A @ vv + fq @ S_prev
    den = A.sum(-1) + (fq @ z_prev[..., None])[..., 0]
    if torch.is_tensor(eps):  # (the rows padded up to the chunk get 1: no 0/0 in the backward)
        eps = F.pad(eps, (0, N - n_q), value=1.0).unflatten(-1, (m, chunk))[..., None]
    out = num / (den[..., None] + eps)
    return out.reshape(B, K, G, N, -1)[:, :, :, :n_q].reshape(B, H, n_q, -1)


class LinearState:
    """The recurrent state of the linear family: S (B, K, F, Dv) and z (B, K, F), plus for
    features scaled by a running constant (Performer) that constant c (B, K, 1).
    Content: B·K·F·(Dv + 1)·e bytes (+ B·K·e for c)."""

    def __init__(self, batch, heads, features, value_dim, dtype, device, scaled: bool = False):
        self.S = torch.zeros(batch, heads, features, value_dim, dtype=dtype, device=device)
        self.z = torch.zeros(batch, heads, features, dtype=dtype, device=device)
        self.c = torch.full((batch, heads, 1), float("-inf"), dtype=dtype, device=device) if scaled else None
        self.length = 0
        self.last_read_bytes = self.last_flops = 0

    def add(self, fk, v) -> None:
        """fk (B, K, t, F) features (already zero at padding), v (B, K, t, Dv)."""
        self.S += fk.transpose(-1, -2) @ v
        self.z += fk.sum(2)
        self.length += fk.shape[2]

    def read(self, fq, eps):
        """fq (B, H, 1, F) -> (B, H, 1, Dv); eps a number or (B, H, 1)."""
        B, H, _, Fd = fq.shape
        K = self.S.shape[1]
        fg = fq.reshape(B, K, H // K, Fd)
        num = fg @ self.S  # (B, K, G, Dv)
        den = fg @ self.z[..., None]  # (B, K, G, 1)
        if torch.is_tensor(eps):
            eps = eps.reshape(B, K, H // K, 1)
        self.last_read_bytes = (self.S.numel() + self.z.numel()) * self.S.element_size()
        self.last_flops = 2 * B * H * Fd * (self.S.shape[-1] + 1) + 2 * B * K * Fd * (self.S.shape[-1] + 1)
        return (num / (den + eps)).reshape(B, H, 1, -1)

    def nbytes(self) -> int:
        n = self.S.numel() + self.z.numel() + (0 if self.c is None else self.c.numel())
        return n * self.S.element_size()


@register_attention("linear")
class LinearAttention(AttentionBase):
    """Linear transformer: elu(x)+1 feature map, O(n) time and memory."""

    exact = False
    complexity = "O(n)"
    supports_decode = True
    supports_gqa = True

    def __init__(self, eps: float = 1e-6, chunk: int = 64):
        super().__init__()
        self.eps = check_float("eps", eps, 0.0, lo_open=True)
        self.chunk = check_int("chunk", chunk, 1)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "chunked-causal" if causal else "global-state"
        return linear_attention(phi(q), phi(k), v, causal, key_padding_mask, self.eps, self.chunk)

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """Forward matmul FLOPs of the algorithm (see `linear_flops`)."""
        return linear_flops(batch, heads, kv_heads, n_q, n_k, head_dim, head_dim, causal, self.chunk)

    # ------------------------------------------------------------------ decoding: the recurrent form
    def new_cache(self, batch, heads, head_dim, dtype=torch.float32, device="cpu", max_len: int = 0):
        return LinearState(batch, heads, head_dim, head_dim, dtype, device)

    def prefill(self, cache, q, k, v, key_padding_mask=None):
        out = self(q, k, v, causal=True, key_padding_mask=key_padding_mask)
        fk = phi(k)
        if key_padding_mask is not None:
            fk = fk * (~key_padding_mask)[:, None, :, None].to(fk.dtype)
        cache.add(fk, v)
        return out

    def step(self, cache, q, k, v):
        check_step(q, k, v)
        cache.add(phi(k), v)
        return cache.read(phi(q), self.eps)
