"""lucidrains' `local-attention` (`LocalAttention`) as a plugin: the implementation many users pick
for a sliding window, run through its own code path on effattn's q, k and v.

Configured to compute what `sliding_window(window=w)` computes (docs/semantics.md): keys with
|i - j| <= w (j <= i when causal). Taken as a new user would take it, it differs in three ways,
each adapted here and stated (docs/peers.md):

* without `exact_windowsize=True` it attends whole buckets of w keys (a query sees between w and
  2w keys back depending on where it sits in its bucket): set to True;
* with `autopad=True` it pads q, k and v with zeros to a multiple of w and attends those zero keys
  unless given a mask: a mask marking the real keys (and the caller's padding) is always passed;
* a query with no key left (all padded) gets the mean of V, not zeros: such rows are zeroed here.

Its rotary embedding is off (`dim=None`): effattn's attention cores take positions from the model.
"""

from __future__ import annotations

import torch

from ...kernels.masks import band_pairs, causal_mask, rows_with_a_key
from ...registry import register_attention
from ..base import AttentionBase, check_int
from ._common import peer_begin, unavailable


@register_attention("local_attention")
class LocalAttentionPeer(AttentionBase):
    """local-attention's LocalAttention (lucidrains), exact window |i - j| <= window."""

    complexity = "O(n·w)"
    supports_cross = False  # LocalAttention buckets one sequence
    wraps = ("local-attention",)

    def __init__(self, window: int = 256):
        super().__init__()
        self.window = check_int("window", window, 1)
        self._impl: dict[bool, torch.nn.Module] = {}

    @staticmethod
    def availability(device: str = "cpu") -> str | None:
        return unavailable("local_attention")

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
        m = (i - j).abs() <= self.window
        return m & causal_mask(n_q, n_k) if causal else m

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        return band_pairs(n_q, n_k, self.window, causal)

    def _local(self, causal: bool):
        if causal not in self._impl:
            from local_attention import LocalAttention

            self._impl[causal] = LocalAttention(
                window_size=self.window,
                causal=causal,
                look_backward=1,
                look_forward=0 if causal else 1,
                exact_windowsize=True,
                autopad=True,
                dim=None,
                use_rotary_pos_emb=False,
            )
        return self._impl[causal]

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        if (empty := peer_begin(self, "local_attention", q, k, v, causal, key_padding_mask)) is not None:
            return empty
        self.last_backend = "local-attention"
        B, n = q.shape[0], q.shape[2]
        keep = torch.ones(B, n, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            keep = ~key_padding_mask
        out = self._local(causal)(q, k, v, mask=keep)  # the mask also hides its own zero padding
        if key_padding_mask is not None:
            has = rows_with_a_key(keep, self.window, n, causal)  # (B, n)
            out = out * has[:, None, :, None].to(out.dtype)
        return out
