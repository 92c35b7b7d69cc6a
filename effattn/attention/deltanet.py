"""DeltaNet and Gated DeltaNet: linear attention whose state is edited by the delta rule.

DeltaNet (Schlag et al. 2021, "Linear Transformers Are Secretly Fast Weight Programmers",
arXiv:2102.11174; chunked training by Yang et al. 2024, "Parallelizing Linear Transformers with
the Delta Rule over Sequence Length", arXiv:2406.06484), per batch row and key/value head:

    S_t = S_{t-1} + k_t (beta_t (v_t - S_{t-1}^T k_t))^T = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (q_t / sqrt(D)),   S_{-1} = 0

Gated DeltaNet (Yang et al. 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
arXiv:2412.06464) decays the state by a scalar gate first:

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T

q and k are L2-normalised per head, x / sqrt(|x|^2 + 1e-6), as in both papers (and fla's
`l2norm`); beta_t = sigmoid(k_t · w_b + b_b) and, for the gated form,
log alpha_t = -exp(A_log) · softplus(k_t · w_a + dt_bias) (Mamba2's gate, as fla's Gated DeltaNet
layer has it), from the raw key k_t: a plugin sees only q, k and v, so the key stands in for the
layer input the papers project (docs/semantics.md). w_b, b_b, w_a, A_log and dt_bias are learned,
shared by the heads, initialised from `seed`. The recurrences are those of fla's references
`delta_rule_recurrence` and `naive_recurrent_gated_delta_rule` (fla-org/flash-linear-attention,
fla/ops/delta_rule/naive.py, fla/ops/gated_delta_rule/naive.py), which tests/test_gated_linear.py
runs against these plugins. No code is taken from them.

The forward is the chunked WY form (Yang et al. 2024, §3): inside a chunk of C tokens the new
values u_r = beta_r (v_r - (alpha_r S_{r-1})^T k_r) solve one unit lower-triangular system
(I + L) U = diag(beta) V - diag(beta Γ) K S_0, L_rs = beta_r (Γ_r / Γ_s) k_r · k_s for s < r, Γ the
running product of alpha in the chunk and S_0 the state entering it; then
O = diag(Γ) Q S_0 + ((Q K^T) ⊙ Γ_r / Γ_s, s <= r) U and the state leaves the chunk as
Γ_C S_0 + (K ⊙ Γ_C / Γ_s)^T U. The triangular solves and Q K^T are batched over all chunks
(O(n·C·(C + D)) work); a scan over the n / C chunks carries the state (O(n·D·Dv)). Decoding is
the recurrence: one D x Dv state per key/value head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..registry import register_attention
from .gla import GatedRecurrence, chunks, work_dtype


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + 1e-6)


def delta_chunked(q, k, v, beta, log_alpha, chunk: int, state=None):
    """q (B, K, G, n, D) normalised and scaled; k (B, K, n, D) normalised, v (B, K, n, Dv),
    beta (B, K, n), log_alpha (B, K, n) <= 0 or None (DeltaNet: alpha = 1); `state` (B, K, D, Dv)
    entering, or None. Returns the outputs (B, K, G, n, Dv) and the last state (B, K, D, Dv)."""
    B, K, G, n, D = q.shape
    Dv = v.shape[-1]
    C = max(1, min(chunk, n))
    m = -(-n // C)
    q = chunks(q, m, C)  # (B, K, G, m, C, D); rows past n: q = k = v = beta = 0, alpha = 1
    k, v = chunks(k, m, C).unsqueeze(2), chunks(v, m, C).unsqueeze(2)  # (B, K, 1, m, C, .)
    beta = chunks(beta[..., None], m, C).unsqueeze(2)  # (B, K, 1, m, C, 1)
    incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if log_alpha is None:
        ratio = incl.to(q.dtype)  # Γ_r / Γ_s = 1 for s <= r
        gam = gam_end_over = None
    else:
        g = chunks(log_alpha[..., None], m, C).unsqueeze(2).cumsum(-2)  # (B, K, 1, m, C, 1): log Γ
        ratio = torch.exp((g - g.transpose(-1, -2)).masked_fill(~incl, float("-inf")))  # (.., C, C), <= 1
        gam = torch.exp(g)
        gam_end_over = torch.exp(g[..., -1:, :] - g)  # Γ_C / Γ_s, (.., C, 1)
    KK = k @ k.transpose(-1, -2)  # (B, K, 1, m, C, C)
    L = (beta * KK * ratio).tril(-1)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    rhs = torch.cat([beta * v, beta * (k if gam is None else gam * k)], -1)
    sol = torch.linalg.solve_triangular(L + eye, rhs, upper=False, unitriangular=True)
    U0, W = sol.split([Dv, D], -1)  # U = U0 - W S_0
    A = (q @ k.transpose(-1, -2)) * ratio  # (B, K, G, m, C, C)
    q_in = q if gam is None else q * gam
    k_out = k if gam_end_over is None else k * gam_end_over
    S = q.new_zeros(B, K, 1, D, Dv) if state is None else state.unsqueeze(2)
    outs = []
    # the scan over chunks, on per-chunk tensors unbound once: indexing a chunk out of the whole
    # tensor inside the loop costs a whole-tensor gradient per chunk in the backward (n^2 / C work)
    per_chunk = [t.unbind(3) for t in (U0, W, q_in, A, k_out)]
    keep = [None] * m if gam is None else gam[..., -1:, :].unbind(3)
    for U0c, Wc, qc, Ac, kc, keep_c in zip(*per_chunk, keep):
        U = U0c - Wc @ S  # (B, K, 1, C, Dv)
        outs.append(qc @ S + Ac @ U)
        S = (S if keep_c is None else keep_c * S) + kc.transpose(-1, -2) @ U
    return torch.stack(outs, 3).flatten(3, 4)[:, :, :, :n], S.squeeze(2)


class _DeltaRule(GatedRecurrence):
    gated = False

    def gates(self, k):
        """beta (B, K, n) and log alpha (B, K, n) or None, from the raw keys, in k's dtype."""
        beta = torch.sigmoid(k @ self.beta_weight.to(k.dtype) + self.beta_bias.to(k.dtype))
        if not self.gated:
            return beta, None
        x = k @ self.alpha_weight.to(k.dtype) + self.dt_bias.to(k.dtype)
        return beta, -torch.exp(self.A_log.to(k.dtype)) * F.softplus(x)

    def run(self, q, k, v, key_padding_mask=None, state=None):
        B, H, n, D = q.shape
        K = k.shape[1]
        wd = work_dtype(q.dtype)
        q, k, v = q.to(wd), k.to(wd), v.to(wd)
        beta, log_alpha = self.gates(k)
        kn = l2_normalise(k)
        if key_padding_mask is not None:  # a padded key: beta = 0 (no update), alpha = 1
            pad = key_padding_mask[:, None, :]
            beta, kn = beta.masked_fill(pad, 0.0), kn.masked_fill(pad[..., None], 0.0)
            v = v.masked_fill(pad[..., None], 0.0)
            log_alpha = None if log_alpha is None else log_alpha.masked_fill(pad, 0.0)
        qg = (l2_normalise(q) * D**-0.5).reshape(B, K, H // K, n, D)
        out, S = delta_chunked(qg, kn, v, beta, log_alpha, self.chunk, None if state is None else state.to(wd))
        return out.reshape(B, H, n, -1), S

    def chunked_flops(self, B, H, K, n, N, C, D, Dv) -> int:
        """The gate projections (k · w, one or two per key); per key/value head K K^T in each chunk,
        W S_0 and the state's update K^T U; per query head Q K^T, the read Q S_0 and the scores
        times U. The triangular solve (about C²·(D + Dv) per chunk and key/value head) is left out,
        as torch's FLOP counter leaves it out."""
        gates = (2 if self.gated else 1) * 2 * B * K * n * D
        return gates + 2 * B * N * (K * (C * D + 2 * D * Dv) + H * (C * D + D * Dv + C * Dv))

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        if (empty := self._start(q, k, v, causal, key_padding_mask)) is not None:
            return empty
        self.last_backend = "chunked-wy"
        return self.run(q, k, v, key_padding_mask)[0].to(q.dtype)

    def step_state(self, cache, q, k, v):
        """One token: S = alpha S; u = beta (v - S^T k); S = S + k u^T; o = S^T q / sqrt(D)."""
        B, H, _, D = q.shape
        K = k.shape[1]
        beta, log_alpha = self.gates(k)  # (B, K, 1)
        kn = l2_normalise(k)  # (B, K, 1, D)
        S = cache.S if log_alpha is None else torch.exp(log_alpha)[..., None] * cache.S
        u = beta[..., None] * (v - kn @ S)  # (B, K, 1, Dv)
        cache.S = S + kn.transpose(-1, -2) @ u
        qn = l2_normalise(q) * D**-0.5
        return (qn.reshape(B, K, H // K, D) @ cache.S).reshape(B, H, 1, -1)


@register_attention("deltanet_core")
class DeltaNet(_DeltaRule):
    """DeltaNet: linear attention whose state is corrected by the delta rule; chunked, causal only."""

    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"chunk": 5},)

    def __init__(self, seed: int = 0, chunk: int = 64, head_dim: int = 0):
        super().__init__(seed, chunk, head_dim)

    def initial_parameters(self, d, gen):
        return {
            "beta_weight": torch.randn(d, generator=gen, dtype=torch.float64) / math.sqrt(d),
            "beta_bias": torch.zeros((), dtype=torch.float64),
        }


@register_attention("gated_deltanet_core")
class GatedDeltaNet(_DeltaRule):
    """Gated DeltaNet: the delta rule with a scalar decay gate per token (Mamba2's); chunked, causal only."""

    gated = True
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"chunk": 5},)

    def __init__(self, seed: int = 0, chunk: int = 64, head_dim: int = 0):
        super().__init__(seed, chunk, head_dim)

    def initial_parameters(self, d, gen):
        p = DeltaNet.initial_parameters(self, d, gen)
        p["alpha_weight"] = torch.randn(d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        # Mamba2's initialisation (as fla's layer): A ~ U(1, 16), dt log-uniform in [1e-3, 1e-1]
        # with dt_bias = softplus^-1(dt); one of each here, shared by the heads
        A = 1 + 15 * torch.rand((), generator=gen, dtype=torch.float64)
        dt = torch.exp(math.log(1e-3) + torch.rand((), generator=gen, dtype=torch.float64) * math.log(100.0))
        p["A_log"] = torch.log(A)
        p["dt_bias"] = dt + torch.log(-torch.expm1(-dt))
        return p
