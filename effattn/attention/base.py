"""What every built-in plugin shares: declared facts, option checks and the mask conventions of
docs/semantics.md (causal is top-left aligned `j <= i`; `key_padding_mask` is True at padding; a query
row left with no key outputs zeros)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UnsupportedError
from ..options import check_choice, check_float, check_int  # noqa: F401  (re-exported: plugins import them from here)


class AttentionBase(nn.Module):
    """Base for built-in plugins. Third-party plugins need not subclass it: the registry reads the
    same facts, with defaults, from any class (see `effattn.registry.Facts`)."""

    exact: bool = True
    complexity: str = "O(n^2)"
    supports_causal: bool = True
    causal_only: bool = False
    supports_padding: bool = True
    supports_cross: bool = True
    supports_decode: bool = False
    supports_gqa: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")

    #: which computation path the last forward took (recorded in results).
    last_backend: str = "default"

    def check_call(self, q, k, v, causal, key_padding_mask) -> None:
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__} {causal!r}")
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            raise ValueError("q, k, v must be (batch, heads, seq, head_dim)")
        if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"incompatible shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
        if q.shape[1] != k.shape[1]:
            H, K = q.shape[1], k.shape[1]
            if K < 1 or H % K:
                raise ValueError(f"key/value heads ({K}) must divide query heads ({H})")
            if not self.supports_gqa:
                raise UnsupportedError(
                    f"{type(self).__name__} does not support grouped-query heads ({H} query heads, {K} key/value heads)"
                )
        if causal and not self.supports_causal:
            raise UnsupportedError(f"{type(self).__name__} does not support causal attention")
        if not causal and self.causal_only:
            raise UnsupportedError(
                f"{type(self).__name__} computes only the causal form (a recurrence over the sequence, "
                "each token's output from the tokens up to it): call it with causal=True"
            )
        if key_padding_mask is not None:
            if not self.supports_padding:
                raise UnsupportedError(f"{type(self).__name__} does not support key_padding_mask")
            if key_padding_mask.shape != (k.shape[0], k.shape[2]) or key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be bool (batch, n_k) = ({k.shape[0]}, {k.shape[2]}), "
                    f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
                )
        if q.shape[2] != k.shape[2] and not self.supports_cross:
            raise UnsupportedError(f"{type(self).__name__} does not support n_q != n_k (cross-attention)")

    @staticmethod
    def empty_output(q, k, v):
        """The output when there is no query (n_q = 0: an empty tensor) or no key (n_k = 0: every
        row has no key, so zeros), or None when both are present. It stays on the autograd graph,
        so forward + backward of an empty call works (with zero gradients)."""
        if q.shape[2] and k.shape[2]:
            return None
        out = q.new_zeros(*q.shape[:3], v.shape[-1])
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            out = out + 0 * (q.sum() + k.sum() + v.sum())
        return out


def dense_pairs(n_q: int, n_k: int, causal: bool) -> int:
    """Pairs of an unrestricted softmax: n_q * n_k, or with causal the pairs with j <= i."""
    if not causal:
        return n_q * n_k
    m = min(n_q, n_k)
    return m * (m + 1) // 2 + max(0, n_q - n_k) * n_k


# ----------------------------------------------------------------------------- masks
def causal_mask(n_q: int, n_k: int, device=None) -> torch.Tensor:
    """(n_q, n_k) bool, True where j <= i (top-left aligned, as SDPA's is_causal)."""
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return j <= i


def combine_masks(pattern: torch.Tensor | None, key_padding_mask: torch.Tensor | None):
    """Pattern (n_q, n_k) and padding (B, n_k, True = pad) -> allowed mask broadcastable to
    (B, 1, n_q, n_k), or None when everything attends."""
    mask = pattern
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, n_k)
        mask = keep if mask is None else (mask & keep)
    return mask


def guard_empty_rows(mask: torch.Tensor | None):
    """A row with no allowed key would make softmax 0/0. Let such rows attend key 0 instead (so
    every intermediate and gradient stays finite) and return a row multiplier that zeroes them.
    Returns (mask, row_keep) where row_keep is None when no row is empty."""
    if mask is None:
        return None, None
    has_key = mask.any(-1, keepdim=True)  # (..., n_q, 1)
    if bool(has_key.all()):
        return mask, None
    first = torch.zeros(mask.shape[-1], dtype=torch.bool, device=mask.device)
    first[0] = True
    return mask | (~has_key & first), has_key


def softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def band_pairs(n_q: int, n_k: int, window: int, causal: bool = False, fixed: int = 0) -> int:
    """Pairs with |i - j| <= window (and j <= i when causal), plus the first `fixed` keys for every
    query (sinks), counted without building the mask."""
    i = torch.arange(n_q)
    lo = (i - window).clamp(min=0)
    hi = torch.minimum(i if causal else i + window, torch.tensor(n_k - 1))
    band = (hi - lo + 1).clamp(min=0)
    if fixed:
        extra = torch.minimum(torch.tensor(fixed), lo)  # sinks below the band's start
        if causal:
            extra = torch.minimum(extra, i + 1)
        band = band + extra.clamp(min=0)
    return int(band.sum())


def rows_with_a_key(keep: torch.Tensor, window: int, n_q: int, causal: bool) -> torch.Tensor:
    """keep (B, n_k) bool, True where a key may be attended -> (B, n_q) bool: whether row i has any
    kept key j with |i - j| <= window (j <= i when causal). For wrappers of libraries that give a
    row with no key the mean of V instead of zeros."""
    B, n_k = keep.shape
    c = torch.nn.functional.pad(keep.long().cumsum(1), (1, 0))  # c[:, j] = kept keys before j
    i = torch.arange(n_q, device=keep.device)
    lo = (i - window).clamp(min=0, max=n_k)
    hi = (i if causal else i + window).clamp(max=n_k - 1) + 1
    hi = torch.maximum(hi, lo)
    return (c[:, hi] - c[:, lo]) > 0
