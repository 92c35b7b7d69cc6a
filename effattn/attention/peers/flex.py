"""FlexAttention (`torch.nn.attention.flex_attention`, compiled) with a named mask, as a plugin of
its own: `flex:mask=sliding_window:window=256` runs the pattern effattn's `sliding_window` states,
through PyTorch's compiled FlexAttention kernel instead of effattn's chunked engine.

The mask is the named built-in's own `pair_mask` (the same definition, docs/semantics.md), given
to FlexAttention as its `mask_mod`; the named plugin's options (window, sinks, stride, ...) are this
plugin's options. Each new shape compiles (seconds; a sweep records it as `first_call_ms`). On CPU
FlexAttention has no backward: a call that needs gradients is refused (`unsupported`), never
silently run another way.
"""

from __future__ import annotations

import torch

from ...errors import OptionError, UnsupportedError
from ...kernels.flex import flex_available
from ...registry import create_attention, register_attention
from ..base import AttentionBase, check_choice

MASKS = ("sliding_window", "sliding_window_sinks", "sparse", "bigbird")


@register_attention("flex")
class FlexNamedMask(AttentionBase):
    """Compiled FlexAttention with a named effattn mask (mask=sliding_window|sliding_window_sinks|sparse|bigbird)."""

    complexity = "O(nnz)"
    wraps = ("torch",)
    dtypes = ("float32", "bfloat16", "float16")  # FlexAttention's kernels take no float64

    def __init__(self, mask: str = "sliding_window", **options):
        super().__init__()
        self.mask = check_choice("mask", mask, MASKS)
        if "backend" in options:
            raise OptionError("option backend is fixed to flex here; for another backend use the named plugin itself")
        self.inner = create_attention(self.mask, backend="flex", **options)
        for fact in ("exact", "supports_causal", "supports_padding", "supports_cross", "supports_gqa"):
            setattr(self, fact, getattr(self.inner, fact))

    @staticmethod
    def availability(device: str = "cpu") -> str | None:
        why = flex_available()
        return f"unavailable: {why}" if why else None

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        return self.inner.dense_mask(n_q, n_k, causal)

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        return self.inner.nnz(n_q, n_k, causal)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        if q.dtype == torch.float64:  # FlexAttention's kernels take no float64 (the named plugin's auto does)
            raise UnsupportedError("flex: FlexAttention's kernels do not take float64")
        out = self.inner(q, k, v, causal=causal, key_padding_mask=key_padding_mask)
        self.last_backend = self.inner.last_backend
        return out
