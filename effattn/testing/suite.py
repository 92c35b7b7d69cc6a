"""What every conformance check sees: the plugin and its facts (`Suite`), its inputs and cases,
how a check fails (`Failures`: every failing case kept, the first few shown) and how it is
registered (`@check`, in the order of CHECKS)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..reference import TOLERANCE
from ..registry import Facts

#: relative error allowed between an exact plugin in float32 and the float64 reference (the same
#: bound a sweep holds every exact float32 point to: effattn.reference.TOLERANCE)
EXACT_RTOL = TOLERANCE["float32"]
#: the longest length tried while looking for a length at which the pattern excludes a pair
#: (lengths grow as 2n + 1: odd, so no multiple of a block size hides an edge case)
PATTERN_BOUND = 1023
#: the longest length a caller may ask for: the float64 reference is dense, O(n^2) in memory
MAX_CHECK_LEN = 4096
#: failing cases listed per check (the rest are counted)
MAX_LISTED = 8


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else "passed" if self.passed else "failed"


class PluginRaised(Exception):
    """The plugin under test raised (as opposed to a check finding a wrong result)."""


class Skip(Exception):
    """Raised by a check that does not apply; its message is the reason."""


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def inputs(b, h, n_q, n_k, d, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)

    def mk(n):
        return torch.randn(b, h, n, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    return mk(n_q), mk(n_k), mk(n_k)


def padding(b, n_k, device):
    """Batch row 0 pads a tail, row 1 (if any) pads everything: that row's output must be zeros."""
    kpm = torch.zeros(b, n_k, dtype=torch.bool)
    kpm[0, max(1, n_k - max(1, n_k // 3)) :] = True
    if b > 1:
        kpm[1, :] = True
    return kpm.to(device)


def label(n_q, n_k, causal, pad) -> str:
    return f"n_q={n_q} n_k={n_k}" + (" causal" if causal else "") + (" padded" if pad else "")


@dataclass
class Suite:
    """What every check sees: the plugin, how to build it again, its facts and the cases."""

    build: Callable[[], torch.nn.Module]
    rebuilds_from_name: bool
    facts: Facts
    device: str
    batch: int
    heads: int
    head_dim: int
    seed: int
    seq_lens: tuple[int, ...]  # the lengths asked for, then those the pattern search tried
    sparse_from: int | None  # the first length at which dense_mask excludes a pair
    pattern_problem: str | None = None  # what was wrong with dense_mask during the length search
    refused: str | None = None  # lengths the search added that the plugin refused, and why
    attn: torch.nn.Module = field(init=False)

    def __post_init__(self):
        torch.manual_seed(self.seed)
        self.attn = self.build().to(self.device)

    @property
    def n_max(self) -> int:
        return max(self.seq_lens)

    def call(self, q, k, v, **kw):
        """The plugin's forward; what it raises is reported as the plugin's, never as a check's."""
        try:
            out = self.attn(q, k, v, **kw)
        except Exception as e:  # whatever it raises is the plugin's failure, named so
            raise PluginRaised(f"the plugin raised {type(e).__name__}: {e}") from e
        if not isinstance(out, torch.Tensor):
            raise AssertionError(f"forward returned {type(out).__name__}, not a tensor")
        return out

    def cases(self) -> list[tuple[int, int, bool, bool]]:
        """(n_q, n_k, causal, padded) for every case the plugin's facts allow (a `causal_only`
        plugin: the causal ones only)."""
        f, n = self.facts, self.n_max
        plain = not f.causal_only
        out = [(m, m, False, False) for m in self.seq_lens] if plain else []
        if f.supports_causal:
            out += [(m, m, True, False) for m in self.seq_lens]
        if f.supports_padding:
            out += ([(n, n, False, True)] if plain else []) + ([(n, n, True, True)] if f.supports_causal else [])
        if f.supports_cross:
            out += [(max(1, n // 2), n, False, False), (n, max(1, n // 2) + 3, False, False)] if plain else []
            if f.supports_causal:
                out.append((max(1, n // 2), n, True, False))
        return out

    @property
    def plain(self) -> dict:
        """The keyword arguments of a call without a mask: none, or causal=True for a plugin that
        computes only the causal form (`causal_only`)."""
        return {"causal": True} if self.facts.causal_only else {}

    def inputs(self, n_q, n_k, dtype=torch.float32, seed_offset=0, batch=None):
        return inputs(batch or self.batch, self.heads, n_q, n_k, self.head_dim, dtype, self.device,
                       self.seed + seed_offset)  # fmt: skip


class Failures:
    """A check's failing cases: every one is kept, the first MAX_LISTED are shown."""

    def __init__(self):
        self.items: list[str] = []

    def case(self, where: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except (AssertionError, PluginRaised) as e:
            self.items.append(f"{where}: {e}")

    def raise_any(self) -> None:
        if self.items:
            shown = self.items[:MAX_LISTED]
            more = len(self.items) - len(shown)
            raise AssertionError("\n".join(shown + ([f"... and {more} more failing cases"] if more else [])))


CHECKS: list[tuple[str, Callable[[Suite], str | None]]] = []


def check(name: str):
    """Add a check to the suite: a function of the Suite that returns a detail line (or None),
    raises AssertionError with what is wrong, or raises Skip with why it does not apply."""

    def deco(fn):
        CHECKS.append((name, fn))
        return fn

    return deco


def kv_heads(h: int) -> list[int]:
    """Key/value head counts to try with h query heads: multi-query (1) and, where it differs, h/2."""
    return sorted({1, h // 2} - {0, h}) if h > 1 else []
