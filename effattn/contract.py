"""The optional part of the plugin contract, asked in one place: what a built plugin declares
beyond `forward` (its pattern, its pair count, its algorithm's FLOPs, its memory floor, the path
its last call took). Which methods a plugin has is a fact of its class (`effattn.registry.Facts`,
read once at registration); these functions call them and check what comes back, so that no
consumer reaches into a plugin with `getattr`.

    facts = contract.facts(attn)                       # the class's Facts
    mask = contract.dense_mask(attn, n, n, causal)     # None: no pattern declared
    pairs = contract.attended_pairs(attn, n, n, causal)
"""

from __future__ import annotations

import functools

from .kernels.masks import dense_pairs
from .registry import Facts

#: a plugin with only `dense_mask` has it counted whole up to this many (bool) elements
DENSE_COUNT_MAX = 2**28


@functools.lru_cache(maxsize=256)
def _class_facts(cls) -> Facts:
    return Facts.of(cls)


def facts(attn) -> Facts:
    """The facts of a built plugin: its class's, unless the instance overrides one (a plugin
    whose options change what it is, e.g. exactness)."""
    base = _class_facts(type(attn))
    own = vars(attn) if hasattr(attn, "__dict__") else {}
    if not any(f in own for f in Facts.__dataclass_fields__):
        return base
    return Facts.of(attn)


def dense_mask(attn, n_q: int, n_k: int, causal: bool):
    """The (n_q, n_k) bool pattern the plugin computes, or None where it declares none."""
    return attn.dense_mask(n_q, n_k, causal) if facts(attn).has_dense_mask else None


def attended_pairs(attn, n_q: int, n_k: int, causal: bool) -> int | None:
    """Pairs (i, j) that take part in the softmax, counted exactly: the basis of useful FLOPs.

    A plugin's own `nnz(n_q, n_k, causal)` first (every built-in has one); else its `dense_mask`,
    counted while it fits in DENSE_COUNT_MAX booleans; else, for an approximate plugin, the pairs
    of the softmax it approximates (all, or j <= i when causal). An exact plugin whose pattern
    cannot be counted gives None: no FLOP rate is better than a wrong one."""
    f = facts(attn)
    if f.has_nnz:
        return int(attn.nnz(n_q, n_k, causal))
    if f.has_dense_mask:
        return int(attn.dense_mask(n_q, n_k, causal).sum()) if n_q * n_k <= DENSE_COUNT_MAX else None
    return None if f.exact else dense_pairs(n_q, n_k, causal)


def algorithm_flops(attn, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int | None:
    """The forward FLOPs an approximate plugin's algorithm performs, as it states them; None when
    it states none or states something that is not a non-negative number."""
    if not facts(attn).states_flops:
        return None
    try:
        f = attn.algorithm_flops(batch, heads, kv_heads, n_q, n_k, head_dim, causal)
    except Exception:  # noqa: BLE001 - a plugin's broken count is no count, not a failed point
        return None
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not f == f or f < 0 or f == float("inf"):
        return None
    return int(f)


def min_memory_bytes(attn, batch, heads, n_q, n_k, head_dim, element_size, causal, grad) -> int:
    """What the plugin says it allocates at least, beyond inputs and outputs (0 when it says nothing)."""
    if not facts(attn).declares_memory:
        return 0
    return max(0, int(attn.min_memory_bytes(batch, heads, n_q, n_k, head_dim, element_size, causal, grad)))


def last_backend(attn) -> str | None:
    """The computation path the plugin's last call took, where it says (`last_backend`)."""
    return getattr(attn, "last_backend", None)
