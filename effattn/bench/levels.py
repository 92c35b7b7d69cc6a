"""Where a point's attention sits (`Level`: the core alone, one layer, the backbone) and what one
timed call does (`Mode`: a forward, a forward and backward). Each is chosen once per point from
its spec (`level_of`, `mode_of`); the stages of a point ask them instead of branching on names.
(Decoding, `--mode decode`, is a pipeline of its own: `effattn.bench.decode`.)"""

from __future__ import annotations

import torch

from ..errors import UnsupportedError
from ..model import MixerLayer, MultiHeadAttention, Transformer, TransformerConfig, self_mixing
from ..registry import get_entry
from .spec import MODEL_VOCAB, Config, PointSpec


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


class Level:
    """Builds the measured module, its inputs and its calls; finds its attention cores."""

    name = ""
    #: the error columns compare the core's output on the point's own q, k and v (attention only)
    has_qkv = False
    #: how many (B, H, n, D)-sized tensors of activations a call holds, per layer, in the estimate
    activations = 6

    def build(self, spec: PointSpec) -> torch.nn.Module:
        raise NotImplementedError

    def inputs(self, spec: Config, n: int, grad: bool, g: torch.Generator) -> tuple:
        raise NotImplementedError

    def cores(self, module) -> list:
        """Every attention core (or mixer) of the module: a layer's, or each layer's (self and cross)."""
        return [m.core for m in module.modules() if isinstance(m, (MultiHeadAttention, MixerLayer))]

    def call(self, module, tensors, causal: bool):
        return module(*tensors)

    def estimate_bytes(self, spec: PointSpec) -> tuple[int, list[str]]:
        """A lower bound on what the inputs and outputs take (and their gradients), known before
        anything is allocated, with what it counts."""
        es = torch.empty(0, dtype=spec.torch_dtype).element_size()
        act = spec.batch * spec.heads * spec.n * spec.head_dim * es  # one (B, H, n, D) tensor
        layers = spec.layers if self.name == "model" else 1
        est = act * self.activations * layers * (2 if spec.mode == "fwdbwd" else 1)  # x, q, k, v, proj, out
        return est, [f"inputs and outputs {_gib(est)}"]


class AttentionLevel(Level):
    name, has_qkv = "attention", True

    def build(self, spec):
        if get_entry(spec.variant.name).facts.kind == "mixer":
            raise UnsupportedError(
                f"{spec.variant.name} is a sequence mixer (it takes the layer input, not q, k, v): "
                "no attention-level form; use --level layer or model"
            )
        return spec.variant.build().to(spec.device, spec.torch_dtype)

    def inputs(self, spec, n, grad, g):
        dtype = spec.torch_dtype
        if spec.inputs == "trained":
            from .inputs import trained_qkv

            qkv, _ = trained_qkv(spec.batch, spec.heads, spec.head_dim, n, spec.seed)
            return tuple(t.to(device=spec.device, dtype=dtype).requires_grad_(grad) for t in qkv)
        B, H, D = spec.batch, spec.heads, spec.head_dim

        def mk(*shape):
            return torch.randn(*shape, generator=g).to(device=spec.device, dtype=dtype).requires_grad_(grad)

        return mk(B, H, n, D), mk(B, spec.key_heads, n, D), mk(B, spec.key_heads, n, D)

    def cores(self, module):
        return [module]

    def call(self, module, tensors, causal):
        return module(*tensors, causal=causal)

    def estimate_bytes(self, spec):
        es = torch.empty(0, dtype=spec.torch_dtype).element_size()
        act = spec.batch * spec.heads * spec.n * spec.head_dim * es
        # q and out with H heads, k and v with K
        kv = 2 * spec.batch * spec.key_heads * spec.n * spec.head_dim * es
        est = (2 * act + kv) * (2 if spec.mode == "fwdbwd" else 1)
        return est, [f"inputs and outputs {_gib(est)}"]


class LayerLevel(Level):
    name = "layer"

    def build(self, spec):
        return self_mixing(
            spec.heads * spec.head_dim,
            spec.heads,
            spec.variant.name,
            spec.variant.options,
            causal=spec.causal,
            n_kv_heads=spec.kv_heads,
        ).to(spec.device, spec.torch_dtype)

    def inputs(self, spec, n, grad, g):
        x = torch.randn(spec.batch, n, spec.heads * spec.head_dim, generator=g)
        return (x.to(device=spec.device, dtype=spec.torch_dtype).requires_grad_(grad),)


class ModelLevel(Level):
    name = "model"

    def build(self, spec):
        cfg = TransformerConfig(
            vocab_size=MODEL_VOCAB,
            d_model=spec.heads * spec.head_dim,
            n_heads=spec.heads,
            n_kv_heads=spec.kv_heads,
            n_layers=spec.layers,
            d_ff=4 * spec.heads * spec.head_dim,
            dropout=0.0,
            attention=spec.variant.name,
            attention_options=spec.variant.options,
        )
        return Transformer(cfg, "decoder" if spec.causal else "encoder").to(spec.device, spec.torch_dtype)

    def inputs(self, spec, n, grad, g):
        return (torch.randint(0, MODEL_VOCAB, (spec.batch, n), generator=g).to(spec.device),)

    def estimate_bytes(self, spec):
        est, parts = super().estimate_bytes(spec)
        es = torch.empty(0, dtype=spec.torch_dtype).element_size()
        return est + spec.batch * spec.n * max(MODEL_VOCAB, spec.heads * spec.head_dim) * es, parts


LEVELS = {level.name: level for level in (AttentionLevel(), LayerLevel(), ModelLevel())}


def level_of(spec: Config) -> Level:
    return LEVELS[spec.level]


class Mode:
    """What one timed call of a module does, and how its useful work is counted."""

    name = ""
    grad = False
    #: useful FLOPs per call as a multiple of the forward's: exact softmax work (pairs basis) and
    #: an approximate plugin's own count (algorithm basis: a backward as two forwards)
    pairs_factor, algorithm_factor = 1.0, 1.0

    def step(self, module, call, tensors, beat):
        """The timed call: `call()` runs the module once; returns a function of no arguments."""
        module.eval()

        def step():
            beat()
            with torch.no_grad():
                return call()

        return step


class Forward(Mode):
    name = "fwd"


class ForwardBackward(Mode):
    name, grad = "fwdbwd", True
    pairs_factor, algorithm_factor = 3.5, 3.0  # a backward as 2.5 forwards (FlashAttention's count)

    def step(self, module, call, tensors, beat):
        module.train()

        def step():
            beat()
            out = call()
            out.float().square().mean().backward()
            for t in tensors:
                t.grad = None
            return out

        return step


class Decode(Mode):
    """One generated token at context n; its own stages make and time the step
    (`effattn.bench.decode`), and a step states its own work (`step_flops`)."""

    name = "decode"


MODES = {mode.name: mode for mode in (Forward(), ForwardBackward(), Decode())}


def mode_of(spec: Config) -> Mode:
    return MODES[spec.mode]
