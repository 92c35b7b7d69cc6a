"""What the built-in plugins share for decoding (docs/decoding.md): the caches and one attention
step of one new query against cached keys.

Shapes: a step's q is (B, H, 1, D); k and v are (B, K, 1, D) with K key/value heads (K divides H;
query head h reads key/value head h // (H / K)). Every cache has `length` (tokens seen) and
`nbytes()`, the bytes of its content - the figure docs/decoding.md states as a formula for each
plugin. A step records what it read and computed in `last_read_bytes` and `last_flops`.

The step against a long cache is memory-bound: its cost is reading the keys and values once.
Measured here (2 cores, fp32, 8 query heads, head_dim 64): SDPA with one query row per head reads
a 64k-token cache at ~22 GB/s with 8 KV heads, but at ~5 GB/s with one KV head, because one head
leaves one core idle and a matmul with 8 rows runs far below the machine's rate. So the query
heads of a group are laid out as the rows of one query block (no copy of k or v), and the keys
are split into a few segments attended in parallel and merged by their log-sum-exp, as
flash-decoding does (Dao et al. 2023): 13 GB/s with one KV head, 25 with eight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedError

#: a key run shorter than this per segment is not split (the merge would cost more than it saves)
SPLIT_MIN_KEYS = 2048
SPLITS = 8


def check_step(q, k, v) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (batch, heads, 1, head_dim)")
    if q.shape[2] != 1 or k.shape[2] != 1 or v.shape[2] != 1:
        raise ValueError(f"a decoding step takes one token: q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    check_heads(q, k, v)


def check_heads(q, k, v) -> None:
    H, K = q.shape[1], k.shape[1]
    if k.shape[:2] != v.shape[:2] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if K < 1 or H % K:
        raise ValueError(f"key/value heads ({K}) must divide query heads ({H})")


def group_rows(q, kv_heads: int) -> torch.Tensor:
    """(B, H, 1, D) -> (B, K, H/K, D): the query heads of a group as the rows of one block (a view)."""
    B, H, _, D = q.shape
    return q.reshape(B, kv_heads, H // kv_heads, D)


def _flash_cpu():
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _lse_attend(q, k, v, keep):
    """Softmax attention of rows q (B, K, G, D) over k, v (B, K, L, D) with its log-sum-exp
    (B, K, G). `keep` (B, L) bool or None. Rows with no key give zeros and lse -inf."""
    scale = q.shape[-1] ** -0.5
    s = torch.matmul(k, q.transpose(-1, -2) * scale)  # (B, K, L, G): the tall side first is ~2.5x faster
    if s.shape[-2] == 0:
        z = q.new_zeros(*q.shape[:-1], v.shape[-1])
        return z, q.new_full(q.shape[:-1], float("-inf"))
    if keep is not None:
        s = s.masked_fill(~keep[:, None, :, None], float("-inf"))
    m = s.amax(-2, keepdim=True)  # (B, K, 1, G)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m_safe)
    den = p.sum(-2)  # (B, K, G)
    out = torch.matmul(p.transpose(-1, -2), v) / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]
    return out, (m_safe[..., 0, :] + den.log())  # (B, K, G, Dv), (B, K, G); -inf where no key


def attend(q, k, v, keep=None) -> torch.Tensor:
    """One query token per head against cached keys: q (B, H, 1, D), k, v (B, K, L, D) (views
    into a cache are fine: nothing is copied), `keep` (B, L) bool (True attends) or None.
    Returns (B, H, 1, Dv); a row with no key is zeros."""
    B, H, _, D = q.shape
    K, L = k.shape[1], k.shape[2]
    if L == 0:
        return q.new_zeros(B, H, 1, v.shape[-1])
    qg = group_rows(q, K)  # (B, K, G, D)
    G = qg.shape[2]
    # few (batch, kv-head) pairs leave cores idle: split the keys into segments and merge
    few = B * K < 2 * torch.get_num_threads()
    splits = SPLITS if (few and L >= SPLITS * SPLIT_MIN_KEYS and q.device.type == "cpu") else 1
    if splits == 1 and keep is None:
        return F.scaled_dot_product_attention(qg, k, v).reshape(B, H, 1, -1)  # (B, K, G, Dv)
    if splits == 1:
        out, _ = _lse_attend(qg, k, v, keep)
        return out.reshape(B, H, 1, -1)
    flash = _flash_cpu() if not torch.is_grad_enabled() else None
    seg = L // splits
    main = seg * splits
    outs, lses = [], []
    if keep is None and flash is not None and k.stride(-1) == 1 and v.stride(-1) == 1:
        for b in range(B):  # segments as a view of the cache: (K, S, seg, D) with the cache's strides
            kb, vb = (
                torch.as_strided(
                    t,
                    (K, splits, seg, t.shape[-1]),
                    (t.stride(1), seg * t.stride(2), t.stride(2), 1),
                    t.storage_offset() + b * t.stride(0),
                )  # fmt: skip
                for t in (k, v)
            )
            qb = qg[b][:, None].expand(K, splits, G, D).contiguous()
            o, lse = flash(qb, kb, vb, 0.0, False)  # (K, S, G, Dv), (K, S, G)
            outs.append(o)
            lses.append(lse)
        out, lse = torch.stack(outs), torch.stack(lses)  # (B, K, S, G, Dv), (B, K, S, G)
    else:  # a mask, or no flash kernel: the segments through plain matmuls (copies k and v once)
        kk = k[:, :, :main].reshape(B, K * splits, seg, D)
        vv = v[:, :, :main].reshape(B, K * splits, seg, v.shape[-1])
        qs = qg.unsqueeze(2).expand(B, K, splits, G, D).reshape(B * K * splits, 1, G, D)
        ks = None if keep is None else keep[:, :main].reshape(B, 1, splits, seg).expand(B, K, splits, seg)
        out, lse = _lse_attend(
            qs, kk.reshape(B * K * splits, 1, seg, D), vv.reshape(B * K * splits, 1, seg, -1),
            None if ks is None else ks.reshape(B * K * splits, seg),
        )  # fmt: skip
        out, lse = out.reshape(B, K, splits, G, -1), lse.reshape(B, K, splits, G)
    if main < L:  # the last L - main keys (fewer than `splits`)
        o, lr = _lse_attend(qg, k[:, :, main:], v[:, :, main:], None if keep is None else keep[:, main:])
        out, lse = torch.cat([out, o[:, :, None]], 2), torch.cat([lse, lr[:, :, None]], 2)
    top = lse.amax(2, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lse - top)  # (B, K, S, G): 0 for a segment with no key
    den = w.sum(2)
    merged = (out * w[..., None]).sum(2) / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]
    return merged.reshape(B, H, 1, -1)


def expand_padding(key_padding_mask, batch: int, length: int, device):
    """A prompt's padding (B, p; True = pad) as `keep` flags (True attends), or None."""
    if key_padding_mask is None:
        return None
    if key_padding_mask.shape != (batch, length) or key_padding_mask.dtype != torch.bool:
        raise ValueError(
            f"key_padding_mask must be bool (batch, prompt) = ({batch}, {length}), got "
            f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )
    return ~key_padding_mask.to(device)


class KVCache:
    """Every key and value seen, in buffers that grow by doubling (amortised O(1) per token).
    Content: 2·B·K·L·D·e bytes for L tokens (+ B·L one-byte flags when the prompt was padded).
    `truncate(L)` drops the tokens after L (speculative decoding does this; the benchmark does it
    to time many steps at one context length)."""

    def __init__(self, batch, heads, head_dim, dtype, device, capacity: int = 0, value_dim: int | None = None):
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.value_dim = value_dim or head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.length = 0
        cap = max(1, capacity)
        self.k = torch.empty(batch, heads, cap, head_dim, dtype=dtype, device=device)
        self.v = torch.empty(batch, heads, cap, self.value_dim, dtype=dtype, device=device)
        self.keep: torch.Tensor | None = None  # (B, cap) True attends; None while nothing is padded
        self.last_read_bytes = self.last_flops = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def _grow(self, need: int) -> None:
        cap = self.capacity
        if need <= cap:
            return
        new = max(need, 2 * cap)
        for name in ("k", "v"):
            old = getattr(self, name)
            buf = old.new_empty(*old.shape[:2], new, old.shape[3])
            buf[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, buf)
        if self.keep is not None:
            keep = self.keep.new_ones(self.batch, new)
            keep[:, : self.length] = self.keep[:, : self.length]
            self.keep = keep

    def append(self, k, v, keep=None) -> None:
        """k, v (B, K, t, D); keep (B, t) or None (every new token attends)."""
        if tuple(k.shape[:2]) != (self.batch, self.heads) or k.shape[-1] != self.head_dim:
            raise ValueError(
                f"the cache holds (batch, heads, head_dim) = ({self.batch}, {self.heads}, {self.head_dim}); "
                f"got k{tuple(k.shape)}"
            )
        t = k.shape[2]
        self._grow(self.length + t)
        L = self.length
        self.k[:, :, L : L + t] = k
        self.v[:, :, L : L + t] = v
        if keep is not None and self.keep is None and not bool(keep.all()):
            self.keep = torch.ones(self.batch, self.capacity, dtype=torch.bool, device=self.device)
        if self.keep is not None:
            self.keep[:, L : L + t] = True if keep is None else keep
        self.length = L + t

    def keys(self):
        return self.k[:, :, : self.length]

    def values(self):
        return self.v[:, :, : self.length]

    def flags(self):
        return None if self.keep is None else self.keep[:, : self.length]

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"truncate({length}): the cache holds {self.length} tokens")
        self.length = length

    def nbytes(self) -> int:
        es = self.k.element_size()
        flags = 0 if self.keep is None else self.batch * self.length
        return self.batch * self.heads * self.length * (self.head_dim + self.value_dim) * es + flags


class RingCache:
    """The first `fixed` tokens (global tokens or sinks) plus a ring of the last `ring` tokens.
    Content: 2·B·K·(fixed + ring)·D·e bytes, allocated whole when the cache is built
    (+ B·(fixed + ring) one-byte flags when the prompt was padded). Slot s of the ring holds the
    latest position p with p = s (mod ring)."""

    def __init__(self, batch, heads, head_dim, dtype, device, fixed: int, ring: int):
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.fixed, self.ring = fixed, ring
        self.length = 0
        shape = (batch, heads, fixed + ring, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.keep: torch.Tensor | None = None
        self.last_read_bytes = self.last_flops = 0

    def _slot(self, p: int) -> int:
        return p if p < self.fixed else self.fixed + p % self.ring

    def write(self, k, v, keep=None) -> None:
        """Tokens at positions length .. length + t - 1 (only those that stay are stored)."""
        t = k.shape[2]
        L = self.length
        if keep is not None and self.keep is None and not bool(keep.all()):
            self.keep = torch.ones(self.batch, self.fixed + self.ring, dtype=torch.bool, device=self.k.device)
        for p in range(max(L, L + t - self.ring), L + t):  # the last `ring` of them
            s = self._slot(p)
            self.k[:, :, s] = k[:, :, p - L]
            self.v[:, :, s] = v[:, :, p - L]
            if self.keep is not None:
                self.keep[:, s] = True if keep is None else keep[:, p - L]
        for p in range(L, min(L + t, self.fixed)):  # sinks / globals among the earlier ones
            self.k[:, :, p] = k[:, :, p - L]
            self.v[:, :, p] = v[:, :, p - L]
            if self.keep is not None:
                self.keep[:, p] = True if keep is None else keep[:, p - L]
        self.length = L + t

    def valid(self, newest: int, window: int) -> torch.Tensor | None:
        """(fixed + ring,) bool: slots holding a position p <= newest with p < fixed, or
        newest - window <= p (a ring slot's position below `fixed` is the fixed slot's already);
        None when every slot qualifies (the steady state, which then needs no mask)."""
        f, r = self.fixed, self.ring
        if newest >= f + r - 1 and window >= r - 1 and newest >= f:
            return None
        s = torch.arange(r)
        p = newest - torch.remainder(newest - s, r)  # the latest position in slot s
        ring_ok = (p >= f) & (p >= 0) & (newest - p <= window)
        fixed_ok = torch.arange(f) <= newest
        return torch.cat([fixed_ok, ring_ok]).to(self.k.device)

    def nbytes(self) -> int:
        es = self.k.element_size()
        n = self.fixed + self.ring
        return 2 * self.batch * self.heads * n * self.head_dim * es + (0 if self.keep is None else self.batch * n)


def refuse_gqa(name: str, q, k) -> None:
    if q.shape[1] != k.shape[1]:
        raise UnsupportedError(f"{name} does not support grouped-query heads (k, v with fewer heads than q)")


class KVDecoding:
    """Decoding for a plugin whose next token may attend any earlier token: a `KVCache` of every
    key and value. The step attends the keys `step_keys(position)` names (None: all of them).
    Mixed into an `AttentionBase` subclass, whose causal forward serves the prefill."""

    supports_decode = True

    def new_cache(self, batch, heads, head_dim, dtype=torch.float32, device="cpu", max_len: int = 0):
        return KVCache(batch, heads, head_dim, dtype, device, capacity=max_len)

    def prefill(self, cache, q, k, v, key_padding_mask=None):
        out = self(q, k, v, causal=True, key_padding_mask=key_padding_mask)
        cache.append(k, v, expand_padding(key_padding_mask, k.shape[0], k.shape[2], k.device))
        return out

    def step_keys(self, position: int) -> torch.Tensor | None:
        """The earlier-or-equal positions the token at `position` attends (None: every one)."""
        return None

    def step(self, cache, q, k, v):
        check_step(q, k, v)
        cache.append(k, v)
        pos = cache.length - 1
        idx = self.step_keys(pos)
        keys, values, keep = cache.keys(), cache.values(), cache.flags()
        if idx is not None:
            idx = idx.to(keys.device)
            keys, values = keys.index_select(2, idx), values.index_select(2, idx)
            keep = None if keep is None else keep.index_select(1, idx)
        B, H, _, D = q.shape
        L = keys.shape[2]
        cache.last_read_bytes = 2 * B * k.shape[1] * L * D * keys.element_size()
        cache.last_flops = 4 * B * H * L * D
        return attend(q, keys, values, keep)
