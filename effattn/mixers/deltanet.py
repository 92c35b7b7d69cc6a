"""DeltaNet and Gated DeltaNet as their papers' layers: sequence mixers around the delta rule.

DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence
Length", arXiv:2406.06484, §4 and its layer in flash-linear-attention, fla/layers/delta_net.py):

    q, k, v = SiLU(ShortConv(x W_q)), SiLU(ShortConv(x W_k)), SiLU(ShortConv(x W_v))   (per head after)
    q, k    = L2-normalised per head;   beta = sigmoid(x W_b)   (one per head and token)
    S_t     = S_{t-1} + k_t (beta_t (v_t - S_{t-1}^T k_t))^T,   o_t = S_t^T q_t / sqrt(D)
    y       = (RMSNorm(o) per head) W_o

Gated DeltaNet (Yang et al. 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
arXiv:2412.06464, and fla/layers/gated_deltanet.py) decays the state first, S_{t-1} -> alpha_t S_{t-1},
with Mamba-2's gate log alpha_t = -exp(A_log) softplus(x W_a + dt_bias) (per head), and gates the
output: y = (RMSNorm(o) * SiLU(x W_g)) W_o.

The recurrence is the core `deltanet_core` / `gated_deltanet_core` computes (effattn/attention/deltanet.py:
`delta_chunked`, the chunked WY form, for training and prefill); decoding is the recurrence itself,
one token at a time, with a (heads, D, Dv) state and each convolution's last K - 1 inputs — nothing
that grows with the context. Parameter names are fla's, so fla's layer weights load into these
(tests/test_mixer_references.py compares the two in float64). No code is taken from fla.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention.deltanet import delta_chunked, l2_normalise
from ..attention.gla import work_dtype
from ..registry import register_mixer
from .base import GatedRMSNorm, MixerBase, MixerState, QKVStateShapes, RMSNorm, ShortConv, check_float, check_int


class DeltaRuleLayer(QKVStateShapes, MixerBase):
    """What DeltaNet and Gated DeltaNet's layers share: projections, convolutions, the delta rule."""

    gated = False
    complexity = "O(n·C·D + n·D·Dv)"

    def __init__(
        self,
        d_model: int = 64,
        n_heads: int = 4,
        seed: int = 0,
        head_dim: int = 0,
        expand_v: float = 1.0,
        conv_size: int = 4,
        chunk: int = 64,
        use_short_conv: bool = True,
    ):
        super().__init__(d_model, n_heads, seed)
        self.head_k_dim = check_int("head_dim", head_dim, 0) or d_model // n_heads
        expand_v = check_float("expand_v", expand_v, 0.0, lo_open=True)
        self.head_v_dim = int(round(self.head_k_dim * expand_v))
        if self.head_v_dim < 1 or not math.isclose(self.head_v_dim, self.head_k_dim * expand_v):
            raise ValueError(f"head_dim * expand_v must be a whole number >= 1, got {self.head_k_dim * expand_v}")
        self.conv_size = check_int("conv_size", conv_size, 1)
        self.chunk = check_int("chunk", chunk, 1)
        self.use_short_conv = bool(use_short_conv)
        kd, vd = n_heads * self.head_k_dim, n_heads * self.head_v_dim
        self.key_dim, self.value_dim = kd, vd
        self.q_proj = nn.Linear(d_model, kd, bias=False)
        self.k_proj = nn.Linear(d_model, kd, bias=False)
        self.v_proj = nn.Linear(d_model, vd, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        if self.use_short_conv:
            self.q_conv1d, self.k_conv1d = ShortConv(kd, conv_size), ShortConv(kd, conv_size)
            self.v_conv1d = ShortConv(vd, conv_size)
        if self.gated:
            self.a_proj = nn.Linear(d_model, n_heads, bias=False)
            self.A_log = nn.Parameter(torch.zeros(n_heads))
            self.dt_bias = nn.Parameter(torch.zeros(n_heads))
            self.g_proj = nn.Linear(d_model, vd, bias=False)
            self.o_norm = GatedRMSNorm(self.head_v_dim)
        else:
            self.o_norm = RMSNorm(self.head_v_dim)
        self.o_proj = nn.Linear(vd, d_model, bias=False)
        self.init_weights()

    def init_parameter(self, name, p, gen):
        if name == "A_log":  # Mamba-2's (and fla's): A ~ U(1, 16)
            p.copy_(torch.log(1 + 15 * torch.rand(p.shape, generator=gen, dtype=torch.float64)))
        elif name == "dt_bias":  # dt log-uniform in [1e-3, 1e-1], dt_bias = softplus^-1(dt)
            dt = torch.exp(math.log(1e-3) + torch.rand(p.shape, generator=gen, dtype=torch.float64) * math.log(100.0))
            p.copy_(dt + torch.log(-torch.expm1(-dt)))
        else:
            super().init_parameter(name, p, gen)

    # ------------------------------------------------------------------ the layer's parts
    def _qkv(self, x, state):
        """q, k, v after projection and convolution (B, n, .); the convolution windows after x."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if not self.use_short_conv:
            return F.silu(q), F.silu(k), F.silu(v), {}
        get = (lambda nm: None) if state is None else state.__getitem__
        (q, wq), (k, wk), (v, wv) = (
            conv.run(t, get(nm))
            for conv, t, nm in (
                (self.q_conv1d, q, "conv_q"),
                (self.k_conv1d, k, "conv_k"),
                (self.v_conv1d, v, "conv_v"),
            )
        )
        return q, k, v, {"conv_q": wq, "conv_k": wk, "conv_v": wv}

    def _gates(self, x):
        """beta (B, H, n) and log alpha (B, H, n) or None."""
        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)
        if not self.gated:
            return beta, None
        log_alpha = -torch.exp(self.A_log.to(x.dtype)) * F.softplus(self.a_proj(x) + self.dt_bias.to(x.dtype))
        return beta, log_alpha.transpose(1, 2)

    def _out(self, o, x):
        """o (B, H, n, Dv) -> norm (and gate), merged heads, output projection -> (B, n, d_model)."""
        o = rearrange(o, "b h n d -> b n h d")
        if self.gated:
            o = self.o_norm(o, rearrange(self.g_proj(x), "b n (h d) -> b n h d", h=self.n_heads))
        else:
            o = self.o_norm(o)
        return self.o_proj(rearrange(o, "b n h d -> b n (h d)"))

    def mix(self, x, state):
        xw = x.to(work_dtype(x.dtype))
        q, k, v, windows = self._qkv(xw, state)
        heads = {"h": self.n_heads}
        q = l2_normalise(rearrange(q, "b n (h d) -> b h n d", **heads)) * self.head_k_dim**-0.5
        k = l2_normalise(rearrange(k, "b n (h d) -> b h n d", **heads))
        v = rearrange(v, "b n (h d) -> b h n d", **heads)
        beta, log_alpha = self._gates(xw)
        S0 = None if state is None else state["ssm"].to(xw.dtype)
        o, S = delta_chunked(q.unsqueeze(2), k, v, beta, log_alpha, self.chunk, S0)
        out = self._out(o.squeeze(2), xw).to(x.dtype)
        new = MixerState()
        new["ssm"] = S
        for nm, w in windows.items():
            new[nm] = w
        return out, new

    def step_state(self, state, x):
        """One token: S = alpha S; u = beta (v - S^T k); S = S + k u^T; o = S^T q (q, k normalised)."""
        xw = x.to(state["ssm"].dtype)
        q, k, v, windows = self._qkv(xw, state)
        for nm, w in windows.items():
            state[nm] = w
        heads = {"h": self.n_heads}
        q = l2_normalise(rearrange(q, "b n (h d) -> b h n d", **heads)) * self.head_k_dim**-0.5
        k = l2_normalise(rearrange(k, "b n (h d) -> b h n d", **heads))
        v = rearrange(v, "b n (h d) -> b h n d", **heads)
        beta, log_alpha = self._gates(xw)  # (B, H, 1)
        S = state["ssm"] if log_alpha is None else torch.exp(log_alpha)[..., None] * state["ssm"]
        u = beta[..., None] * (v - k @ S)  # (B, H, 1, Dv)
        state["ssm"] = S + k.transpose(-1, -2) @ u
        state.last_flops = 2 * x.shape[0] * self.n_heads * self.head_k_dim * self.head_v_dim * 4
        return self._out(q @ state["ssm"], xw).to(x.dtype)

    def projection_flops(self, batch, n):
        """q, k, v and beta (with the decay gate alpha and the output gate g), and the output."""
        d, H, D, Dv = self.d_model, self.n_heads, self.head_k_dim, self.head_v_dim
        outs = 2 * H * D + H * Dv + H + (H + H * Dv if self.gated else 0)
        return 2 * batch * n * d * outs + 2 * batch * n * H * Dv * d

    def mixing_flops(self, batch, n):
        """The convolutions, and the chunked delta rule as computed over n padded to whole chunks:
        per chunk and head K K^T, W S_0, the state's update K^T U, Q K^T, Q S_0 and the scores times U
        (the triangular solve left out, as torch's FLOP counter leaves it out; norms and gates'
        elementwise work too)."""
        H, D, Dv = self.n_heads, self.head_k_dim, self.head_v_dim
        conv = 2 * batch * n * (2 * H * D + H * Dv) * self.conv_size if self.use_short_conv else 0
        C = max(1, min(self.chunk, n))
        N = -(-n // C) * C
        return conv + 2 * batch * N * H * (2 * C * D + 3 * D * Dv + C * Dv)


@register_mixer("deltanet")
class DeltaNet(DeltaRuleLayer):
    """DeltaNet's layer (Yang et al. 2024): short convolutions, L2-normalised q and k, beta from the input."""

    small_options = ({"chunk": 5},)


@register_mixer("gated_deltanet")
class GatedDeltaNet(DeltaRuleLayer):
    """Gated DeltaNet's layer (Yang et al. 2025): DeltaNet's with Mamba-2's decay gate and an output gate."""

    gated = True
    small_options = ({"chunk": 5},)
