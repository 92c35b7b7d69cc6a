"""HF transformers' `LongformerSelfAttention` as a plugin, fed effattn's q, k and v through its own
code path: its query/key/value projections are replaced by modules that hand over the given q, k
and v (in the (seq, batch, heads * head_dim) layout it expects), so everything after the projections
- the 1/sqrt(d) scaling, the sliding-chunk score matmuls, the masks, the softmax (in float32) and
the sliding-chunk value matmul - is HF's.

HF's `attention_window` is the full width: `attention_window = 2w` attends |i - j| <= w, which is
effattn's `sliding_window(window=w)` (docs/peers.md). As a new user would meet it:

* the sequence length must be a multiple of 2w (HF's `LongformerModel` pads; the self-attention
  module asserts): padded here to the multiple, the added positions masked as keys, and cut off;
* HF's mask marks *tokens*: a masked position is neither attended nor given an output (its row is
  zeroed). effattn's `key_padding_mask` masks keys only, so padding is not declared;
* global tokens use separate global projections of the hidden states, which q, k, v given
  directly do not have: not offered here (`sliding_window:global_tokens=g` is effattn's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.masks import band_pairs
from ...registry import register_attention
from ..base import AttentionBase, check_int
from ._common import Given, peer_begin, unavailable


@register_attention("hf_longformer")
class HFLongformerPeer(AttentionBase):
    """HF transformers LongformerSelfAttention (attention_window = 2 * window), no global tokens."""

    complexity = "O(n·w)"
    supports_causal = False
    supports_padding = False
    supports_cross = False
    dtypes = ("float32", "float64")
    wraps = ("transformers",)

    def __init__(self, window: int = 256):
        super().__init__()
        self.window = check_int("window", window, 1)
        self._impl: dict[tuple, nn.Module] = {}

    @staticmethod
    def availability(device: str = "cpu") -> str | None:
        return unavailable("transformers")

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
        return (i - j).abs() <= self.window

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        return band_pairs(n_q, n_k, self.window, causal)

    def _module(self, heads: int, head_dim: int):
        key = (heads, head_dim)
        if key not in self._impl:
            from transformers import LongformerConfig
            from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

            cfg = LongformerConfig(
                hidden_size=heads * head_dim,
                num_attention_heads=heads,
                attention_window=[2 * self.window],
                attention_probs_dropout_prob=0.0,
            )
            m = LongformerSelfAttention(cfg, layer_id=0).eval()
            m.query, m.key, m.value = Given(), Given(), Given()
            self._impl[key] = m
        return self._impl[key]

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        if (empty := peer_begin(self, "hf_longformer", q, k, v, causal, key_padding_mask)) is not None:
            return empty
        self.last_backend = "hf-longformer"
        B, H, n, D = q.shape
        w2 = 2 * self.window
        N = -(-n // w2) * w2
        m = self._module(H, D)

        def given(t):  # (B, H, n, D) -> (N, B, H*D), a fresh tensor (HF divides q in place)
            t = F.pad(t, (0, 0, 0, N - n))
            return t.permute(2, 0, 1, 3).clone(memory_format=torch.contiguous_format).view(N, B, H * D)

        m.query.value, m.key.value, m.value.value = given(q), given(k), given(v)
        mask = torch.zeros(B, N, dtype=q.dtype, device=q.device)
        mask[:, n:] = -10000.0  # HF's "no attention"
        masked = mask < 0
        none = torch.zeros(B, N, dtype=torch.bool, device=q.device)
        try:
            out = m(
                torch.zeros(B, N, H * D, dtype=q.dtype, device=q.device),  # only its shape is read
                attention_mask=mask,
                is_index_masked=masked,
                is_index_global_attn=none,
                is_global_attn=False,
            )[0]
        finally:
            m.query.value = m.key.value = m.value.value = None
        return out[:, :n].reshape(B, n, H, D).transpose(1, 2)
