"""Decoding with any plugin: its own cache where it declares one (`supports_decode`), otherwise
by recomputation - the causal forward over the whole prefix, its last row kept - so that every
causal plugin can be measured generating, and the cost of having no cache shows
(docs/decoding.md).

    dec = decoder_for(attn)            # attn: a built plugin (an nn.Module)
    cache = dec.new_cache(batch, kv_heads, head_dim, dtype=..., device=...)
    out = dec.prefill(cache, q, k, v)  # the prompt's causal output
    out = dec.step(cache, q1, k1, v1)  # one token in, one out; the cache grows or rolls
"""

from __future__ import annotations

import torch

from .errors import UnsupportedError

BACKENDS = ("native", "recompute")


class RecomputeCache:
    """Every q, k and v seen (a plugin without a cache needs the queries too: the causal forward
    is recomputed over the whole prefix). Content 3·B·H·L·D·e bytes (q's heads, k and v's)."""

    def __init__(self, batch, heads, head_dim, dtype, device, max_len: int = 0):
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.q = self.k = self.v = None
        self.pad = None  # (B, L) True = pad, or None
        self.length = 0
        self.last_read_bytes = self.last_flops = 0

    def append(self, q, k, v, pad=None) -> None:
        t = q.shape[2]
        if self.q is None:
            self.q, self.k, self.v = q, k, v
        else:
            self.q, self.k, self.v = (torch.cat([a, b], 2) for a, b in ((self.q, q), (self.k, k), (self.v, v)))
        if pad is not None or self.pad is not None:
            new = pad if pad is not None else torch.zeros(self.batch, t, dtype=torch.bool, device=q.device)
            old = (
                self.pad
                if self.pad is not None
                else torch.zeros(self.batch, self.length, dtype=torch.bool, device=q.device)
            )
            self.pad = torch.cat([old, new], 1)
        self.length += t

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate({length}): the cache holds {self.length} tokens")
        if self.q is not None:
            self.q, self.k, self.v = self.q[:, :, :length], self.k[:, :, :length], self.v[:, :, :length]
        if self.pad is not None:
            self.pad = self.pad[:, :length]
        self.length = length

    def nbytes(self) -> int:
        if self.q is None:
            return 0
        n = self.q.numel() + self.k.numel() + self.v.numel()
        return n * self.q.element_size() + (0 if self.pad is None else self.pad.numel())


class Recompute:
    """Decoding by recomputation, for a causal plugin without a cache of its own."""

    backend = "recompute"

    def __init__(self, attn):
        self.attn = attn

    def new_cache(self, batch, heads, head_dim, dtype=torch.float32, device="cpu", max_len: int = 0):
        return RecomputeCache(batch, heads, head_dim, dtype, device, max_len)

    def prefill(self, cache, q, k, v, key_padding_mask=None):
        out = self.attn(q, k, v, causal=True, key_padding_mask=key_padding_mask)
        cache.append(q, k, v, key_padding_mask)
        return out

    def step(self, cache, q, k, v):
        cache.append(q, k, v)
        out = self.attn(cache.q, cache.k, cache.v, causal=True, key_padding_mask=cache.pad)
        cache.last_read_bytes = cache.nbytes()
        cache.last_flops = None  # the forward's own count, which the caller knows (attended pairs)
        return out[:, :, -1:]


class Native:
    """A plugin's own cache, with the contract's checks around it."""

    backend = "native"

    def __init__(self, attn):
        self.attn = attn

    def new_cache(self, batch, heads, head_dim, dtype=torch.float32, device="cpu", max_len: int = 0):
        return self.attn.new_cache(batch, heads, head_dim, dtype=dtype, device=device, max_len=max_len)

    def prefill(self, cache, q, k, v, key_padding_mask=None):
        return self.attn.prefill(cache, q, k, v, key_padding_mask=key_padding_mask)

    def step(self, cache, q, k, v):
        return self.attn.step(cache, q, k, v)


def decoder_for(attn, name: str | None = None):
    """The plugin's own decoding (`Native`) where it declares `supports_decode`, else `Recompute`
    for a causal plugin; a plugin that cannot run causally cannot decode (UnsupportedError)."""
    label = name or type(attn).__name__
    if getattr(attn, "supports_decode", False):
        missing = [m for m in ("new_cache", "prefill", "step") if not callable(getattr(attn, m, None))]
        if missing:
            raise UnsupportedError(f"{label} declares supports_decode but has no {', '.join(missing)}")
        return Native(attn)
    if not getattr(attn, "supports_causal", False):
        raise UnsupportedError(f"{label} cannot decode: it does not support causal attention")
    return Recompute(attn)


def cache_nbytes(cache) -> int | None:
    """The cache's content in bytes, as it states it (None where it does not)."""
    f = getattr(cache, "nbytes", None)
    try:
        return int(f()) if callable(f) else None
    except Exception:  # noqa: BLE001 - a plugin's broken nbytes is an unknown size, not a crash
        return None
