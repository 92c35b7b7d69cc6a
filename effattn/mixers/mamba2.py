"""Mamba-2's SSD layer as a sequence mixer (Dao & Gu 2024, "Transformers are SSMs: Generalized Models
and Efficient Algorithms Through Structured State Space Duality", arXiv:2405.21060, §7 and its
Listing 1; the layer as Hugging Face transformers' `Mamba2Mixer`, models/mamba2/modeling_mamba2.py).

Per token, with d_inner = expand·d_model channels in H heads of P = d_inner / H, and G groups of
N-wide B and C shared by the H / G heads of a group:

    z, xBC, dt = x W_in                          (d_inner, d_inner + 2·G·N, H)
    x, B, C    = SiLU(ShortConv(xBC))            (depthwise causal conv1d of width conv_size, with bias)
    dt         = softplus(dt + dt_bias),  A = -exp(A_log)          (one of each per head)
    h_t        = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T              (per head, a P x N state)
    y_t        = h_t C_t + D x_t
    out        = (RMSNorm(y · SiLU(z)) per group of d_inner / G channels · weight) W_out

The forward is the chunked SSD form (the paper's §6 "block decomposition", `ssd_chunked`): chunks of
C tokens; inside a chunk the (C, C) scores (C_r · B_s) exp(a_{s+1} + ... + a_r) for s <= r (a = dt·A),
times dt_s x_s; across chunks a scan over the n / C chunks carrying the (H, P, N) state. Every
exponent is of a sum of a = dt·A <= 0, i.e. a difference of cumulative sums masked with -inf above
the diagonal, so every factor is <= 1 and nothing overflows. Decoding is the recurrence itself on
one token (`step_state`) with the state and the convolution's last conv_size - 1 inputs: nothing
grows with the context.

Parameter names are Hugging Face's (in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj), so a
`Mamba2Mixer`'s state_dict loads into this layer as it is; tests/test_mamba2.py compares the two in
float64. Biases as HF's defaults (use_bias=False, use_conv_bias=True); HF's default time_step_limit
(0, inf) clamps nothing, and none is applied here. Half inputs are mixed in float32 (projections in
the input's dtype, as HF's). No code is taken from HF or from the paper's listing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention.gla import chunks, work_dtype
from ..registry import register_mixer
from .base import MixerBase, MixerState, RMSNorm, ShortConv, check_float, check_int


def ssd_chunked(x, dt, log_a, b, c, chunk: int, state=None):
    """The SSD recurrence h_t = exp(a_t) h_{t-1} + dt_t x_t b_t^T, y_t = h_t c_t (no D term), chunked.

    x (B, G, R, n, P): the inputs of G groups of R heads; dt and log_a = dt·A <= 0 (B, G, R, n);
    b, c (B, G, n, N), shared by a group's heads; `state` (B, G, R, P, N) entering, or None (zeros).
    Returns y (B, G, R, n, P) and the state after the last token (B, G, R, P, N). Inside a chunk:
    y_r = sum_{s<=r} (c_r · b_s) exp(g_r - g_s) dt_s x_s + exp(g_r) h_in c_r, g the running sum of a
    from the chunk's start; the chunk's own update of the state is sum_s exp(g_end - g_s) dt_s x_s b_s^T.
    The scores c_r · b_s are made once per group (the paper's "multi-value" sharing of B and C)."""
    Bsz, G, R, n, P = x.shape
    C = max(1, min(chunk, n))
    m = -(-n // C)
    u = chunks(x * dt[..., None], m, C)  # (B, G, R, m, C, P): dt_s x_s; rows past n are 0
    b, c = chunks(b, m, C).unsqueeze(2), chunks(c, m, C).unsqueeze(2)  # (B, G, 1, m, C, N)
    g = chunks(log_a[..., None], m, C).cumsum(-2)  # (B, G, R, m, C, 1); rows past n add a = 0
    tri = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((g - g.transpose(-1, -2)).masked_fill(~tri, float("-inf")))  # (B, G, R, m, C, C)
    intra = ((c @ b.transpose(-1, -2)) * decay) @ u  # (B, G, R, m, C, P): the pairs inside a chunk
    g_end = g[..., -1:, :]  # (B, G, R, m, 1, 1)
    update = u.transpose(-1, -2) @ (b * torch.exp(g_end - g))  # (B, G, R, m, P, N): a chunk's own tokens
    carry = torch.exp(g_end)  # what a chunk keeps of the state entering it
    c_in = c * torch.exp(g)  # (B, G, R, m, C, N): reads of the entering state, decayed up to row r
    S = x.new_zeros(Bsz, G, R, P, b.shape[-1]) if state is None else state
    inter = []
    # the scan over chunks: n / C steps of a P x N state per head, on per-chunk tensors unbound
    # once (indexing a chunk out of the whole tensor in the loop: a whole-tensor gradient per chunk)
    for ck, keep, own in zip(c_in.unbind(3), carry.unbind(3), update.unbind(3)):
        inter.append(ck @ S.transpose(-1, -2))
        S = keep * S + own
    y = intra + torch.stack(inter, 3)
    return y.flatten(3, 4)[..., :n, :], S


class GroupedGatedRMSNorm(RMSNorm):
    """weight · RMSNorm(y · SiLU(z)), the RMS taken over each group of `group` channels: Mamba-2's
    norm after the gate (mamba_ssm's RMSNormGated with norm_before_gate=False, HF's
    MambaRMSNormGated), computed in float32 or float64."""

    def __init__(self, dim: int, group: int, eps: float):
        super().__init__(dim, eps)
        self.group = group

    def forward(self, y, z):
        wd = torch.float64 if y.dtype == torch.float64 else torch.float32
        h = (y.to(wd) * F.silu(z.to(wd))).unflatten(-1, (-1, self.group))
        h = (h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return (h * self.weight.to(wd)).to(y.dtype)


@register_mixer("mamba2")
class Mamba2(MixerBase):
    """Mamba-2's SSD layer (Dao & Gu 2024): a scalar-decay state space per head, chunked, with a gated norm."""

    complexity = "O(n·C·(N + P)·H + n·H·P·N)"
    small_options = ({"chunk": 5}, {"chunk": 4, "n_groups": 2, "state_size": 8})

    def __init__(
        self,
        d_model: int = 64,
        n_heads: int = 4,
        seed: int = 0,
        state_size: int = 16,
        expand: int = 2,
        conv_size: int = 4,
        chunk: int = 64,
        n_groups: int = 1,
        norm_eps: float = 1e-5,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        d_init: float = 1.0,
    ):
        super().__init__(d_model, n_heads, seed)
        self.state_size = check_int("state_size", state_size, 1)
        self.expand = check_int("expand", expand, 1)
        self.conv_size = check_int("conv_size", conv_size, 1)
        self.chunk = check_int("chunk", chunk, 1)
        self.n_groups = check_int("n_groups", n_groups, 1, n_heads)
        if n_heads % n_groups:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_groups ({n_groups})")
        norm_eps = check_float("norm_eps", norm_eps, 0.0, lo_open=True)
        self.dt_min = check_float("dt_min", dt_min, 0.0, lo_open=True)
        self.dt_max = check_float("dt_max", dt_max, self.dt_min)
        self.d_init = check_float("d_init", d_init, 0.0)
        self.d_inner = self.expand * d_model
        self.head_dim = self.d_inner // n_heads
        self.conv_dim = self.d_inner + 2 * self.n_groups * self.state_size
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + n_heads, bias=False)
        self.conv1d = ShortConv(self.conv_dim, self.conv_size, activation=True, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(n_heads))
        self.A_log = nn.Parameter(torch.zeros(n_heads))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = GroupedGatedRMSNorm(self.d_inner, self.d_inner // self.n_groups, norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.init_weights()

    def init_parameter(self, name, p, gen):
        """A ~ U(1, 16) (A_log its log, the paper's and mamba_ssm's A_init_range; HF's takes 1..H);
        dt log-uniform in [dt_min, dt_max], floored at 1e-4, and dt_bias = softplus^-1(dt); D = d_init
        (1, the papers'; 0 starts without the skip: on MQAR it leaves the loss plateau sooner,
        docs/mixers.md);
        the convolution's bias 0 (HF's); weights as the base's (nn.Linear's and nn.Conv1d's)."""
        if name == "A_log":
            p.copy_(torch.log(1 + 15 * torch.rand(p.shape, generator=gen, dtype=torch.float64)))
        elif name == "dt_bias":
            lo, hi = math.log(self.dt_min), math.log(self.dt_max)
            dt = torch.exp(lo + torch.rand(p.shape, generator=gen, dtype=torch.float64) * (hi - lo)).clamp(min=1e-4)
            p.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif name == "D":
            p.fill_(self.d_init)
        else:
            super().init_parameter(name, p, gen)

    # ------------------------------------------------------------------ the layer's parts
    def _inputs(self, x, window, wd):
        """The projection (in x's dtype) and the convolution, then in `wd`: z (B, n, d_inner), the heads'
        x (B, G, R, n, P), dt and dt·A (B, G, R, n), B and C (B, G, n, N), and the window after x."""
        z, xbc, dt = self.in_proj(x).to(wd).split([self.d_inner, self.conv_dim, self.n_heads], -1)
        xbc, window = self.conv1d.run(xbc, window)
        xs, b, c = xbc.split([self.d_inner, self.n_groups * self.state_size, self.n_groups * self.state_size], -1)
        G = self.n_groups
        dt = rearrange(F.softplus(dt + self.dt_bias.to(wd)), "b n (g r) -> b g r n", g=G)
        A = -torch.exp(self.A_log.to(wd)).view(G, -1, 1)
        xs = rearrange(xs, "b n (g r p) -> b g r n p", g=G, p=self.head_dim)
        b, c = (rearrange(t, "b n (g s) -> b g n s", g=G) for t in (b, c))
        return z, xs, dt, dt * A, b, c, window

    def _out(self, y, xs, z, dtype):
        """y (B, G, R, n, P) + D x, merged heads, gated norm, output projection (in `dtype`)."""
        y = y + self.D.to(y.dtype).view(self.n_groups, -1, 1, 1) * xs
        y = self.norm(rearrange(y, "b g r n p -> b n (g r p)"), z)
        return self.out_proj(y.to(dtype))

    def mix(self, x, state):
        wd = work_dtype(x.dtype)
        window = None if state is None else state["conv"]
        z, xs, dt, log_a, b, c, window = self._inputs(x, window, wd)
        S0 = None if state is None or state["ssm"] is None else state["ssm"].to(wd).unflatten(1, (self.n_groups, -1))
        y, S = ssd_chunked(xs, dt, log_a, b, c, self.chunk, S0)
        new = MixerState()
        new["ssm"], new["conv"] = S.flatten(1, 2), window
        return self._out(y, xs, z, x.dtype), new

    def step_state(self, state, x):
        """One token: h = exp(dt A) h + dt x B^T, y = h C + D x, per head (B and C shared by a group)."""
        wd = state["ssm"].dtype
        z, xs, dt, log_a, b, c, state["conv"] = self._inputs(x, state["conv"], wd)
        S = state["ssm"].unflatten(1, (self.n_groups, -1))  # (B, G, R, P, N)
        u = (xs * dt[..., None]).transpose(-1, -2)  # (B, G, R, P, 1)
        S = torch.exp(log_a)[..., None] * S + u @ b.unsqueeze(2)  # b (B, G, 1, 1, N)
        state["ssm"] = S.flatten(1, 2)
        y = (S @ c.unsqueeze(2).transpose(-1, -2)).transpose(-1, -2)  # (B, G, R, 1, P)
        H, P, N = self.n_heads, self.head_dim, self.state_size
        state.last_flops = self.projection_flops(x.shape[0], 1) + 2 * x.shape[0] * (
            self.conv_dim * self.conv_size + 2 * H * P * N
        )
        return self._out(y, xs, z, x.dtype)

    def state_shapes(self, batch):
        return {
            "ssm": (batch, self.n_heads, self.head_dim, self.state_size),
            "conv": (batch, self.conv_dim, self.conv_size - 1),
        }

    def projection_flops(self, batch, n):
        """in_proj (to z, xBC and dt) and out_proj."""
        return (
            2 * batch * n * (self.d_model * (self.d_inner + self.conv_dim + self.n_heads) + self.d_inner * self.d_model)
        )

    def mixing_flops(self, batch, n):
        """The depthwise convolution, and the chunked SSD as computed over n padded to whole chunks:
        per chunk the scores C B^T (once per group), per head the scores times dt·x, the chunk's state
        update x^T B and the read of the state carried in C h^T (the full C x C scores, though half
        are masked). The decays, the D term, the norm and the gates' elementwise work are left out."""
        H, P, N, G = self.n_heads, self.head_dim, self.state_size, self.n_groups
        conv = 2 * batch * n * self.conv_dim * self.conv_size
        C = max(1, min(self.chunk, n))
        Np = -(-n // C) * C
        return conv + 2 * batch * Np * (G * C * N + H * C * P + 2 * H * P * N)
