"""Performer / FAVOR+ (Choromanski et al. 2021, arXiv:2009.14794).

exp(q.k / sqrt(d)) ~= phi(q)^T phi(k) with positive random features
phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m),  x' = x / d^(1/4),  W: m orthogonal Gaussian rows
(blocks of d orthogonal rows, rescaled to chi-distributed norms), fixed by `seed`. Then the
linear-attention sums of `linear.py`. Supports causal (chunked) and padding.
"""

from __future__ import annotations

import torch

from ..kernels.caches import check_step
from ..registry import register_attention
from .base import AttentionBase, check_int
from .linear import LinearState, linear_attention, linear_flops


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """m rows in blocks of d orthogonal directions, each block uniformly (Haar) distributed, with
    chi-distributed norms. The Q of a QR factorisation is Haar only once its columns take the
    signs of R's diagonal (Mezzadri 2007); without that, every block leaned the same way and the
    kernel estimate was biased by ~3% whatever m (found by benchmarks/reproduce_performer_mse.py:
    orthogonal features then had 1.3-2.5x iid's MSE at m = 64-256, against Theorem 2)."""
    blocks = []
    for _ in range(-(-m // d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        qmat, r = torch.linalg.qr(g)
        qmat = qmat * torch.sign(torch.diagonal(r))  # (a zero on R's diagonal has probability 0)
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1)
    return (w * norms[:, None]).float()


@register_attention("performer")
class PerformerAttention(AttentionBase):
    """FAVOR+: positive orthogonal random features for the softmax kernel."""

    exact = False
    complexity = "O(n·m)"
    supports_decode = True
    supports_gqa = True
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"num_features": 32},)

    def __init__(self, num_features: int = 256, seed: int = 0, orthogonal: bool = True, chunk: int = 64):
        super().__init__()
        self.num_features = check_int("num_features", num_features, 1)
        self.seed = check_int("seed", seed, 0)
        self.orthogonal = orthogonal
        self.chunk = check_int("chunk", chunk, 1)
        self._w: dict[int, torch.Tensor] = {}

    def features(self, d: int) -> torch.Tensor:
        if d not in self._w:
            g = torch.Generator().manual_seed(self.seed)
            if self.orthogonal:
                self._w[d] = orthogonal_gaussian(self.num_features, d, g)
            else:
                self._w[d] = torch.randn(self.num_features, d, generator=g)
        return self._w[d]

    def _phi(self, x, w, per_row: bool, padding=None):
        """(phi(x) * exp(-c), c): features scaled by a constant c per query row, or by one c for
        all keys of a (batch, head) alike, so that exp() cannot overflow. The ratio num/den is
        unchanged by the constants as long as its eps is scaled by them too (forward does so): an
        unscaled eps of 1e-6 made the output depend on c, and with causal a later key's projection
        moved earlier outputs (20% at n = 77, found by the conformance suite's value check)."""
        x = x * x.shape[-1] ** -0.25
        proj = x @ w.T  # (B, H, n, m)
        c = proj.detach()  # (detached: no gradient path through the constant)
        if per_row:
            c = c.amax(-1, keepdim=True)
        else:
            if padding is not None:  # a padded key must not move the constant
                c = c.masked_fill(padding[:, None, :, None], float("-inf"))
            c = c.amax((-1, -2), keepdim=True)
            c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))  # every key padded
        return torch.exp(proj - x.square().sum(-1, keepdim=True) / 2 - c) / self.num_features**0.5, c

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "favor+"
        w = self.features(q.shape[-1]).to(device=q.device, dtype=q.dtype)
        fq, cq = self._phi(q, w, True)
        fk, ck = self._phi(k, w, False, key_padding_mask)
        ck = ck.repeat_interleave(q.shape[1] // k.shape[1], 1)  # (B, K, 1, 1) -> (B, H, 1, 1): tiny
        # linear's eps (1e-6) in the features' own scale: scaled by the same constants, it leaves
        # out_i = phi(q_i)^T S / (phi(q_i)^T z + 1e-6) exactly as unscaled features give it
        eps = (1e-6 * torch.exp(-(cq + ck).float())).clamp_min(torch.finfo(torch.float32).tiny)
        return linear_attention(fq, fk, v, causal, key_padding_mask, eps[..., 0].to(fq.dtype), self.chunk)

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """Forward matmul FLOPs: the two feature maps (x W^T, m features) and linear attention
        over m features (`linear_flops`)."""
        m = self.num_features
        maps = 2 * batch * m * head_dim * (heads * n_q + kv_heads * n_k)
        return maps + linear_flops(batch, heads, kv_heads, n_q, n_k, m, head_dim, causal, self.chunk)

    # ------------------------------------------------------------------ decoding: the recurrent form
    # The state is S = sum phi(k_j) v_j^T and z = sum phi(k_j) with the keys' features scaled by a
    # running constant c (the largest projection seen so far); when a new key raises c, S and z are
    # rescaled by exp(c_old - c_new). The forward scales by the largest over all keys instead; the
    # ratio, with eps scaled alike, is the same number, so the two agree to rounding.
    def new_cache(self, batch, heads, head_dim, dtype=torch.float32, device="cpu", max_len: int = 0):
        return LinearState(batch, heads, self.num_features, head_dim, dtype, device, scaled=True)

    def _absorb(self, cache, k, v, key_padding_mask=None) -> None:
        w = self.features(k.shape[-1]).to(device=k.device, dtype=k.dtype)
        x = k * k.shape[-1] ** -0.25
        proj = x @ w.T  # (B, K, t, m)
        top = proj.detach()
        if key_padding_mask is not None:
            top = top.masked_fill(key_padding_mask[:, None, :, None], float("-inf"))
        c_new = torch.maximum(cache.c, top.amax((-1, -2))[..., None])  # (B, K, 1)
        c_use = torch.where(torch.isfinite(c_new), c_new, torch.zeros_like(c_new))
        c_old = torch.where(torch.isfinite(cache.c), cache.c, c_use)
        rescale = torch.exp(c_old - c_use)  # (B, K, 1): 1 while c does not move
        cache.S *= rescale[..., None]
        cache.z *= rescale
        cache.c = c_new
        fk = torch.exp(proj - x.square().sum(-1, keepdim=True) / 2 - c_use[..., None]) / self.num_features**0.5
        if key_padding_mask is not None:
            fk = fk * (~key_padding_mask)[:, None, :, None].to(fk.dtype)
        cache.add(fk, v)

    def prefill(self, cache, q, k, v, key_padding_mask=None):
        out = self(q, k, v, causal=True, key_padding_mask=key_padding_mask)
        if k.shape[2]:
            self._absorb(cache, k, v, key_padding_mask)
        return out

    def step(self, cache, q, k, v):
        check_step(q, k, v)
        self._absorb(cache, k, v)
        w = self.features(q.shape[-1]).to(device=q.device, dtype=q.dtype)
        fq, cq = self._phi(q, w, True)  # (B, H, 1, m), (B, H, 1, 1)
        B, H = q.shape[:2]
        K = k.shape[1]
        ck = cache.c.repeat_interleave(H // K, 1)[..., None]  # (B, H, 1, 1)
        eps = (1e-6 * torch.exp(-(cq + ck).float())).clamp_min(torch.finfo(torch.float32).tiny)
        out = cache.read(fq, eps[..., 0].to(fq.dtype))
        cache.last_flops += 2 * B * (H + K) * self.num_features * q.shape[-1]  # the two feature maps
        return out
