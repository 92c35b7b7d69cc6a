"""What every sequence mixer shares: the contract, padding by compaction, decoding state, and the
parts the papers' layers are built from (a short causal convolution with its decoding window, an
RMS norm, an output gate).

A sequence mixer is the second kind of plugin (`kind = "mixer"`, docs/mixers.md). An attention
plugin is handed q, k and v; a mixer is handed the layer's input x (batch, n, d_model) and returns
(batch, n, d_model): it owns its projections, convolutions, gates and norms, as GLA, DeltaNet,
Gated DeltaNet and Mamba-2 do. The backbone puts it where multi-head attention would be.

    mixer = create_attention("deltanet", d_model=64, n_heads=4)
    y = mixer(x, causal=True)                      # (B, n, 64)
    state = mixer.new_cache(batch, dtype, device)  # decoding: a state of constant size
    y0 = mixer.prefill(state, prompt)
    y1 = mixer.step(state, x1)                     # one token (B, 1, 64)

A subclass implements `mix(x, state) -> (y, state)`: its chunked form over x from a decoding state
(None: the empty one), returning the state after x; and `step_state(state, x1) -> y1`, the
recurrence on one token. Everything else (checks, empty input, padding, the decoding calls) is here.

Padding: a padded token (key_padding_mask True) is as if it were not in the sequence, as
flash-linear-attention's layers treat it (they drop padded tokens before the kernels): each row's
kept tokens are moved to the front in order, mixed, and put back; a padded position's output is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedError
from ..options import check_float, check_int

__all__ = ["MixerBase", "MixerState", "ShortConv", "RMSNorm", "GatedRMSNorm", "check_float", "check_int"]


class MixerState:
    """A mixer's decoding state: named tensors (the recurrent state, each convolution's window),
    none of which grows with the context. `length` counts the tokens seen."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor | None] = {}
        self.length = 0
        self.last_read_bytes = self.last_flops = 0

    def __getitem__(self, name):
        return self.tensors.get(name)

    def __setitem__(self, name, value):
        self.tensors[name] = value

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values() if t is not None)


class MixerBase(nn.Module):
    """Base of the sequence mixers: facts, checks, padding and decoding around `mix` and `step_state`."""

    kind = "mixer"
    exact = False  # not softmax attention: an error against `full` has no meaning for it
    complexity = "O(n)"
    supports_causal = True
    causal_only = True  # a recurrence: each output from the tokens up to it
    supports_padding = True
    supports_cross = False
    supports_decode = True
    supports_gqa = False
    devices: tuple[str, ...] = ("cpu", "cuda")
    #: half precision is not declared: a layer cast to bfloat16 meets float32 work tensors in its
    #: projections (and a float32 layer a half input), so `bench --dtype bfloat16` says unsupported
    dtypes: tuple[str, ...] = ("float32", "float64")
    last_backend: str = "chunked"

    def __init__(self, d_model: int, n_heads: int, seed: int = 0):
        super().__init__()
        self.d_model = check_int("d_model", d_model, 1)
        self.n_heads = check_int("n_heads", n_heads, 1)
        self.seed = check_int("seed", seed, 0)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")

    def init_weights(self) -> None:
        """Re-draw every parameter from a generator seeded with `seed` (two mixers built with the
        same options are the same function, whatever torch's global generator did before)."""
        gen = torch.Generator().manual_seed(self.seed)
        norms = {f"{m}.weight" if m else "weight" for m, mod in self.named_modules() if isinstance(mod, RMSNorm)}
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name in norms:
                    p.fill_(1.0)
                else:
                    self.init_parameter(name, p, gen)

    def init_parameter(self, name: str, p: torch.Tensor, gen: torch.Generator) -> None:
        """Default: weights uniform in ±1/sqrt(fan_in) (nn.Linear's and nn.Conv1d's), biases 0 (norms'
        scales are 1)."""
        if p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) / fan_in**0.5)
        else:
            p.zero_()

    # ------------------------------------------------------------------ the subclass's part
    def mix(self, x: torch.Tensor, state: MixerState | None) -> tuple[torch.Tensor, MixerState | None]:
        raise NotImplementedError

    def step_state(self, state: MixerState, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        """The shape of each tensor of the decoding state (none depends on the context)."""
        raise NotImplementedError

    def mixing_flops(self, batch: int, n: int) -> int:
        """Forward FLOPs (2 per multiply-add) of the token mixing on n tokens: the convolutions and
        the chunked recurrence as computed; the projections are `projection_flops`."""
        raise NotImplementedError

    def projection_flops(self, batch: int, n: int) -> int:
        """Forward FLOPs of the layer's projections (in, gates, out) on n tokens."""
        raise NotImplementedError

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """The plugin contract's count (effattn.contract): the mixing, as an attention plugin's count
        is its core's and leaves out the layer's q, k, v and output projections."""
        return self.mixing_flops(batch, max(n_q, n_k))

    # ------------------------------------------------------------------ the contract
    def check_input(self, x, causal, key_padding_mask) -> None:
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__} {causal!r}")
        if not causal:
            raise UnsupportedError(
                f"{type(self).__name__} computes only the causal form (a recurrence over the sequence, "
                "each token's output from the tokens up to it): call it with causal=True"
            )
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"a mixer takes x of shape (batch, n, d_model={self.d_model}), got {tuple(x.shape)}")
        if key_padding_mask is not None and (
            key_padding_mask.shape != x.shape[:2] or key_padding_mask.dtype != torch.bool
        ):
            raise ValueError(
                f"key_padding_mask must be bool (batch, n) = {tuple(x.shape[:2])}, "
                f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )

    def forward(self, x, causal: bool = True, key_padding_mask=None):
        self.check_input(x, causal, key_padding_mask)
        if x.shape[0] == 0 or x.shape[1] == 0:
            return x * 0  # on the graph: forward and backward of an empty call (no rows or no tokens) work
        if key_padding_mask is None or not bool(key_padding_mask.any()):
            return self.mix(x, None)[0]
        return self._compacted(x, key_padding_mask)

    def _compacted(self, x, pad):
        """Each row's kept tokens first (in order), mixed, put back; padded outputs 0. Causality
        makes the padded tail moved behind them irrelevant to the kept tokens' outputs."""
        order = torch.sort(pad.to(torch.int8), dim=1, stable=True).indices  # kept first
        idx = order[..., None].expand(-1, -1, x.shape[-1])
        y = self.mix(torch.gather(x, 1, idx), None)[0]
        out = torch.zeros_like(y).scatter(1, idx, y)
        return out.masked_fill(pad[..., None], 0.0)

    # ------------------------------------------------------------------ decoding
    def new_cache(self, batch: int, dtype=torch.float32, device="cpu", max_len: int = 0) -> MixerState:
        st = MixerState()
        wd = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        for name, shape in self.state_shapes(batch).items():
            st[name] = torch.zeros(shape, dtype=wd, device=device)
        return st

    def prefill(self, cache: MixerState, x, key_padding_mask=None):
        """The chunked form over the prompt from the cache's state; the state after it is kept."""
        self.check_input(x, True, key_padding_mask)
        if key_padding_mask is not None and bool(key_padding_mask.any()):
            raise UnsupportedError("a mixer's prefill takes no padding: decode each row's kept tokens")
        self._check_cache(cache, x)
        if x.shape[1] == 0:
            return x * 0
        y, st = self.mix(x, cache)
        for name, t in st.tensors.items():
            cache[name] = None if t is None else t.detach()
        cache.length += x.shape[1]
        return y

    @staticmethod
    def _check_cache(cache: MixerState, x) -> None:
        rows = {t.shape[0] for t in cache.tensors.values() if t is not None}
        if rows and rows != {x.shape[0]}:
            raise ValueError(f"the cache holds {min(rows)} rows, the input {x.shape[0]}: make it with new_cache(batch)")

    def step(self, cache: MixerState, x):
        """One token x (B, 1, d_model) through the recurrence; the state is updated in place."""
        self.check_input(x, True, None)
        if x.shape[1] != 1:
            raise ValueError(f"step takes one token (batch, 1, d_model), got {tuple(x.shape)}")
        self._check_cache(cache, x)
        y = self.step_state(cache, x)
        cache.length += 1
        cache.last_read_bytes = cache.nbytes()
        return y


class QKVStateShapes:
    """The decoding state of a q, k, v recurrence layer (GLA's, DeltaNet's): a (heads, D, Dv) state
    and, with short convolutions, each convolution's last K - 1 inputs. Mixed into a MixerBase
    subclass that sets n_heads, head_k_dim, head_v_dim, key_dim, value_dim, conv_size and
    use_short_conv."""

    def state_shapes(self, batch):
        out = {"ssm": (batch, self.n_heads, self.head_k_dim, self.head_v_dim)}
        if self.use_short_conv:
            K = self.conv_size - 1
            out |= {"conv_q": (batch, self.key_dim, K), "conv_k": (batch, self.key_dim, K)}
            out["conv_v"] = (batch, self.value_dim, K)
        return out


class ShortConv(nn.Conv1d):
    """A short causal depthwise convolution over (B, n, C) with an optional SiLU, as the layers of
    GLA-family papers and Mamba-2 put on q, k, v (weight (C, 1, K), as nn.Conv1d's). Decoding keeps
    the last K - 1 inputs (`window`, (B, C, K - 1)), not the context."""

    def __init__(self, channels: int, kernel: int, activation: bool = True, bias: bool = False):
        super().__init__(channels, channels, kernel, groups=channels, bias=bias)
        self.activation = activation

    def run(self, x, window=None):
        """x (B, n, C) -> (y (B, n, C), the window after x (B, C, K - 1))."""
        K = self.kernel_size[0]
        xt = x.transpose(1, 2)
        prev = xt.new_zeros(*xt.shape[:2], K - 1) if window is None else window.to(xt.dtype)
        full = torch.cat([prev, xt], -1)
        y = F.conv1d(
            full, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype), groups=self.groups
        )
        y = y.transpose(1, 2)
        return (F.silu(y) if self.activation else y), full[..., full.shape[-1] - (K - 1) :]


class RMSNorm(nn.Module):
    """RMS norm over the last dimension with a learned scale, computed in float32 or float64."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        wd = torch.float64 if x.dtype == torch.float64 else torch.float32
        h = x.to(wd)
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.to(wd)).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * weight * SiLU(g): the output gate and norm of GLA and Gated DeltaNet's layers."""

    def forward(self, x, g):
        return super().forward(x) * F.silu(g)
