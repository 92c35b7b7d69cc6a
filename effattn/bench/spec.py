"""What is measured: a sweep (`SweepSpec`: lengths x variants under one configuration) and one
of its points (`PointSpec`: one variant at one length, everything its row's identity and its
measurement need). Both are frozen and validated when built, by the rules the CLI applies;
`dataclasses.replace` makes a changed copy, validated again."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields

import torch

from ..errors import EffattnError
from ..registry import check_option_names
from ..spec import Variant
from ..store import MAX_SEQ_LEN

LEVELS = ("attention", "layer", "model")
MODES = ("fwd", "fwdbwd", "decode")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float64", "bfloat16", "float16")
INPUTS = ("random", "trained")
#: bounds on what a sweep may ask for (larger values are typos, not plans)
MAX_TIMEOUT_S, MAX_MIN_RUN_TIME_S, MAX_SEED = 7 * 24 * 3600.0, 3600.0, 2**62
#: the model level's backbone: layers by default, and its vocabulary
MODEL_LAYERS, MODEL_VOCAB = 2, 256


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EffattnError(f"{name} must be an integer >= 1, got {value!r}")


def _positive_finite(name, value, most):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise EffattnError(f"{name} must be a finite number > 0, got {value!r}")
    if value > most:
        raise EffattnError(f"{name} must be at most {most:g}, got {value!r}")


@dataclass(frozen=True)
class Config:
    """One configuration: what every point of a sweep shares (the row's identity without the
    variant and the length, and the settings its measurement ran under)."""

    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    causal: bool = False
    mode: str = "fwd"
    level: str = "attention"
    timeout_s: float = 120.0
    memory_budget_bytes: int | None = None
    min_run_time_s: float = 0.2
    error: bool = True
    seed: int = 0
    inputs: str = "random"  # or "trained": q, k, v from a backbone trained on MQAR (attention level)
    kv_heads: int | None = None  # key/value heads (grouped-query); None: as many as `heads`
    layers: int = MODEL_LAYERS  # the backbone's layers at level 'model'

    def __post_init__(self):
        choices = {"device": DEVICES, "dtype": DTYPES, "mode": MODES, "level": LEVELS, "inputs": INPUTS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise EffattnError(f"{name} {getattr(self, name)!r}: choose {', '.join(allowed)}")
        for name in ("batch", "heads", "head_dim", "layers"):
            _positive_int(name, getattr(self, name))
        for name in ("causal", "error"):
            if not isinstance(getattr(self, name), bool):
                raise EffattnError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _positive_finite("timeout_s", self.timeout_s, MAX_TIMEOUT_S)
        _positive_finite("min_run_time_s", self.min_run_time_s, MAX_MIN_RUN_TIME_S)
        if self.memory_budget_bytes is not None:
            _positive_int("memory_budget_bytes", self.memory_budget_bytes)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise EffattnError(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if self.inputs == "trained" and self.level != "attention":
            raise EffattnError("inputs 'trained' applies to level 'attention'")
        if self.layers != MODEL_LAYERS and self.level != "model":
            raise EffattnError(f"layers ({self.layers}) applies to level 'model' (the backbone), not {self.level!r}")
        if self.kv_heads is not None:
            _positive_int("kv_heads", self.kv_heads)
            if self.heads % self.kv_heads:
                raise EffattnError(f"kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
            if self.kv_heads == self.heads:
                object.__setattr__(self, "kv_heads", None)  # one spelling per configuration
        if self.mode == "decode":
            if not self.causal:
                raise EffattnError("mode 'decode' generates one token at a time: it is causal (set causal=True)")
            if self.inputs == "trained":
                raise EffattnError("inputs 'trained' is not available with mode 'decode'")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def key_heads(self) -> int:
        return self.kv_heads or self.heads

    def config(self) -> dict:
        """The configuration's fields, as every row carries them."""
        return {f.name: getattr(self, f.name) for f in fields(Config)}


@dataclass(frozen=True)
class SweepSpec(Config):
    """What a sweep measures: its lengths and variants under one configuration."""

    seq_lens: tuple[int, ...] = ()
    variants: tuple[Variant, ...] = ()

    def __init__(self, seq_lens, variants, **config):
        for name, value in (("seq_lens", seq_lens), ("variants", variants)):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise EffattnError(f"{name} must be a list, got {value!r}")
        object.__setattr__(self, "seq_lens", list(seq_lens))
        object.__setattr__(self, "variants", list(variants))
        for f in fields(Config):
            object.__setattr__(self, f.name, config.pop(f.name, f.default))
        if config:
            raise TypeError(f"SweepSpec got unknown fields {', '.join(sorted(config))}")
        self.__post_init__()

    def __post_init__(self):
        Config.__post_init__(self)
        lens = self.seq_lens
        if not lens:
            raise EffattnError("seq_lens is empty: give at least one sequence length")
        for n in lens:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_SEQ_LEN:
                raise EffattnError(f"sequence lengths must be integers in 1..{MAX_SEQ_LEN}, got {n!r}")
        if any(b <= a for a, b in zip(lens, lens[1:])):
            raise EffattnError(
                f"seq_lens must increase without repeats (a variant's longer lengths are skipped "
                f"after an oom or timeout), got {lens}; sorted: {sorted(set(lens))}"
            )
        for v in self.variants:
            if not isinstance(v, Variant):
                raise EffattnError(f"variants must be effattn.spec.Variant, got {type(v).__name__}")
            check_option_names(v.name, v.options)  # no plugin code runs here
        if len({v.label for v in self.variants}) != len(self.variants):
            raise EffattnError("the same variant is listed twice")

    def configuration(self) -> Config:
        return Config(**self.config())

    def point(self, variant: Variant, n: int) -> PointSpec:
        return PointSpec(variant=variant, n=n, **self.config())

    def point_config(self) -> dict:
        """The configuration as the measuring process's job carries it."""
        return self.config()


@dataclass(frozen=True)
class PointSpec(Config):
    """One point: a variant at length n under a configuration."""

    variant: Variant = None
    n: int = 1

    def __post_init__(self):
        Config.__post_init__(self)
        if not isinstance(self.variant, Variant):
            raise EffattnError(f"variant must be effattn.spec.Variant, got {type(self.variant).__name__}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise EffattnError(f"sequence length must be an integer > 0, got {self.n!r}")

    @property
    def label(self) -> str:
        return self.variant.label

    def base_row(self) -> dict:
        """What every row of this point says it is, whatever became of it: identity, settings
        (min_run_time_s included) and the plugin's provenance."""
        return {
            "variant": self.variant.name,
            "options": self.variant.options,
            "label": self.variant.label,
            "seq_len": self.n,
            **self.config(),
            **provenance(self.variant.name),
        }


@functools.cache
def _provenance_cached(name: str) -> tuple:
    from ..registry import provenance as of

    try:
        return tuple(of(name).items())
    except EffattnError:  # an unknown or broken plugin: its row says so elsewhere
        return (("plugin_dist", None), ("plugin_version", None), ("plugin_wraps", None))


def provenance(name: str) -> dict:
    """The distribution and version that provided the plugin (and what a wrapper wraps)."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _provenance_cached(name)}


def base_row(spec: SweepSpec, variant: Variant, n: int) -> dict:
    """The base row of one point of a sweep."""
    return spec.point(variant, n).base_row()


__all__ = ["Config", "SweepSpec", "PointSpec", "base_row", "provenance", "asdict"]
