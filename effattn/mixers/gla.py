"""GLA as its paper's layer: a sequence mixer around gated linear attention.

Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training"
(arXiv:2312.06635, §4.4 and its layer in flash-linear-attention, fla/layers/gla.py), per token:

    q, k, v = x W_q, x W_k, x W_v            (key width d_model·expand_k, value width d_model·expand_v;
                                              optionally a short SiLU convolution on each)
    log a   = logsigmoid(x W_1 W_2 + b) / 16  (the gate: low rank 16 from the input, per key dimension)
    S_t     = diag(a_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t / sqrt(D)
    y       = (RMSNorm(o) per head * SiLU(x W_g)) W_o

The recurrence is what the attention plugin `gla_core` computes (effattn/attention/gla.py:
`gla_chunked`, the chunked form with sub-chunks, for training and prefill); decoding is the
recurrence, one token at a time, with a (heads, D, Dv) state. Parameter names are fla's, so fla's
layer weights load into these (tests/test_mixer_references.py compares them in float64). No code is
taken from fla.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention.gla import gla_chunked, work_dtype
from ..registry import register_mixer
from .base import GatedRMSNorm, MixerBase, MixerState, QKVStateShapes, ShortConv, check_float, check_int


def _width(name: str, d_model: int, expand: float, n_heads: int) -> int:
    w = d_model * check_float(name, expand, 0.0, lo_open=True)
    if not math.isclose(w, round(w)) or round(w) % n_heads or round(w) < n_heads:
        raise ValueError(f"d_model * {name} ({w:g}) must be a whole multiple of n_heads ({n_heads})")
    return round(w)


@register_mixer("gla")
class GLA(QKVStateShapes, MixerBase):
    """GLA's layer (Yang et al. 2024): a low-rank forget gate from the input, an output gate and norm."""

    complexity = "O(n·C·D + n·D·Dv)"
    small_options = ({"chunk": 5},)

    def __init__(
        self,
        d_model: int = 64,
        n_heads: int = 4,
        seed: int = 0,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        use_short_conv: bool = False,
        conv_size: int = 4,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        chunk: int = 64,
    ):
        super().__init__(d_model, n_heads, seed)
        self.key_dim = _width("expand_k", d_model, expand_k, n_heads)
        self.value_dim = _width("expand_v", d_model, expand_v, n_heads)
        self.head_k_dim, self.head_v_dim = self.key_dim // n_heads, self.value_dim // n_heads
        self.use_short_conv = bool(use_short_conv)
        self.conv_size = check_int("conv_size", conv_size, 1)
        rank = check_int("gate_low_rank_dim", gate_low_rank_dim, 1)
        self.normalizer = check_float("gate_logit_normalizer", gate_logit_normalizer, 0.0, lo_open=True)
        self.chunk = check_int("chunk", chunk, 1)
        kd, vd = self.key_dim, self.value_dim
        self.q_proj = nn.Linear(d_model, kd, bias=False)
        self.k_proj = nn.Linear(d_model, kd, bias=False)
        self.v_proj = nn.Linear(d_model, vd, bias=False)
        self.g_proj = nn.Linear(d_model, vd, bias=False)
        if self.use_short_conv:
            self.q_conv1d, self.k_conv1d = ShortConv(kd, conv_size), ShortConv(kd, conv_size)
            self.v_conv1d = ShortConv(vd, conv_size)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, rank, bias=False), nn.Linear(rank, kd, bias=True))
        self.o_proj = nn.Linear(vd, d_model, bias=False)
        self.g_norm_swish_gate = GatedRMSNorm(self.head_v_dim)
        self.init_weights()

    def _qkv(self, x, state):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if not self.use_short_conv:
            return q, k, v, {}
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

    def _heads(self, x, state):
        """q (scaled), k, v, log a as (B, H, n, .), and the convolution windows after x."""
        q, k, v, windows = self._qkv(x, state)
        split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.n_heads)
        log_a = F.logsigmoid(self.gk_proj(x)) / self.normalizer
        return split(q) * self.head_k_dim**-0.5, split(k), split(v), split(log_a), windows

    def _out(self, o, x):
        o = rearrange(o, "b h n d -> b n h d")
        o = self.g_norm_swish_gate(o, rearrange(self.g_proj(x), "b n (h d) -> b n h d", h=self.n_heads))
        return self.o_proj(rearrange(o, "b n h d -> b n (h d)"))

    def mix(self, x, state):
        xw = x.to(work_dtype(x.dtype))
        q, k, v, log_a, windows = self._heads(xw, state)
        S0 = None if state is None else state["ssm"].to(xw.dtype)
        o, S = gla_chunked(q.unsqueeze(2), k, v, log_a, self.chunk, S0)
        new = MixerState()
        new["ssm"] = S
        for nm, w in windows.items():
            new[nm] = w
        return self._out(o.squeeze(2), xw).to(x.dtype), new

    def step_state(self, state, x):
        """One token: S = diag(a) S + k v^T, o = S^T q."""
        xw = x.to(state["ssm"].dtype)
        q, k, v, log_a, windows = self._heads(xw, state)
        for nm, w in windows.items():
            state[nm] = w
        state["ssm"] = torch.exp(log_a).transpose(-1, -2) * state["ssm"] + k.transpose(-1, -2) @ v
        state.last_flops = 2 * x.shape[0] * self.n_heads * self.head_k_dim * self.head_v_dim * 3
        return self._out(q @ state["ssm"], xw).to(x.dtype)

    def projection_flops(self, batch, n):
        """q, k, v, the output gate g, the low-rank forget gate, and the output."""
        d, H, D, Dv = self.d_model, self.n_heads, self.head_k_dim, self.head_v_dim
        rank = self.gk_proj[0].out_features
        return 2 * batch * n * (d * (2 * H * D + 2 * H * Dv) + d * rank + rank * H * D + H * Dv * d)

    def mixing_flops(self, batch, n):
        """The convolutions, and the chunked form over n padded to whole chunks: per chunk and head
        the chunk scores (a second C x 16 x D pass for pairs inside sub-chunks when C is a multiple
        of 16 above it), their product with V, the read of the state carried in and the chunk's
        update k^T v. Norms, gates' elementwise work and the decays left out."""
        H, D, Dv = self.n_heads, self.head_k_dim, self.head_v_dim
        conv = 2 * batch * n * (2 * H * D + H * Dv) * self.conv_size if self.use_short_conv else 0
        C = max(1, min(self.chunk, n))
        N = -(-n // C) * C
        sub = 0 if (C <= 16 or C % 16) else 16
        return conv + 2 * batch * H * N * ((C + sub) * D + C * Dv + 2 * D * Dv)
