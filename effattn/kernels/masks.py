"""The mask conventions every implementation here shares (docs/semantics.md): causal is top-left
aligned (`j <= i`), `key_padding_mask` is True at padding, and a query row left with no key
outputs zeros; pair counts without building masks; SDPA over a boolean mask that keeps those
conventions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dense_attention(q, k, v, mask, scale=None):
    """SDPA with a boolean mask (True attends), zeros for rows with no key. k and v may carry
    fewer heads than q (grouped-query: SDPA's `enable_gqa`)."""
    mask, row_keep = guard_empty_rows(mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out if row_keep is None else out * row_keep


def dense_pairs(n_q: int, n_k: int, causal: bool) -> int:
    """Pairs of an unrestricted softmax: n_q * n_k, or with causal the pairs with j <= i."""
    if not causal:
        return n_q * n_k
    m = min(n_q, n_k)
    return m * (m + 1) // 2 + max(0, n_q - n_k) * n_k


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
