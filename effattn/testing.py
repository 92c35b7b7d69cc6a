"""The conformance suite every plugin goes through.

    from effattn.testing import check_attention, conformance_tests
    check_attention("my_window", w=3)            # raises AssertionError naming every failed check
    test_my_window = conformance_tests("my_window", w=3)   # in a plugin's own tests: one pytest
                                                           # test per check, skips shown as skips

`run_checks` returns every check's outcome instead (`effattn check` prints them). Each check is a
named function in CHECKS, run in that order; a new check is one more function with the `@check`
decorator. What is checked depends on what the plugin declares (`effattn.registry.Facts`): shape
and dtype, finite outputs and gradients, exactness against a float64 dense reference built from
`dense_mask` (exact plugins; forward and gradients, causal, padding, cross, and lengths that are
no multiple of any block), no leak from the future (causal) or from padding, and determinism.

The lengths come from the plugin's own pattern: past the lengths asked for, n doubles (up to
PATTERN_BOUND) until `dense_mask` excludes a pair, and exactness is checked at every length tried,
so a wrong mask cannot hide behind a window wider than the inputs. Where the pattern attends
every pair up to the bound, `pattern_exercised` is skipped and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .guard import TorchState
from .reference import TOLERANCE, reference_attention
from .registry import Facts, create_attention

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


def _rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _inputs(b, h, n_q, n_k, d, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)

    def mk(n):
        return torch.randn(b, h, n, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    return mk(n_q), mk(n_k), mk(n_k)


def _padding(b, n_k, device):
    """Batch row 0 pads a tail, row 1 (if any) pads everything: that row's output must be zeros."""
    kpm = torch.zeros(b, n_k, dtype=torch.bool)
    kpm[0, max(1, n_k - max(1, n_k // 3)) :] = True
    if b > 1:
        kpm[1, :] = True
    return kpm.to(device)


def _label(n_q, n_k, causal, pad) -> str:
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
        return _inputs(batch or self.batch, self.heads, n_q, n_k, self.head_dim, dtype, self.device,
                       self.seed + seed_offset)  # fmt: skip


class _Failures:
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


@check("shape_and_dtype")
def shape_and_dtype(s: Suite):
    """float32, and every other dtype the plugin declares (a claim is a promise to run in it)."""
    fails = _Failures()
    declared = [str(d).replace("torch.", "") for d in s.facts.dtypes]
    for dt in ["float32"] + [d for d in ("float64", "bfloat16", "float16") if d in declared]:
        dtype = getattr(torch, dt)

        def one(dtype=dtype):
            q, k, v = s.inputs(11, 11, dtype)
            out = s.call(q, k, v, **s.plain)
            assert tuple(out.shape) == tuple(q.shape), f"output shape {tuple(out.shape)}, want {tuple(q.shape)}"
            assert out.dtype == dtype, f"output dtype {out.dtype}, want {dtype} (the inputs' dtype)"
            assert torch.isfinite(out).all(), "non-finite output (the plugin declares this dtype)"

        fails.case(dt, one)
    if s.facts.causal_only:  # the claim is a promise to refuse the other form, never to compute it silently

        def refuses():
            from .errors import UnsupportedError

            q, k, v = s.inputs(11, 11)
            try:
                s.attn(q, k, v, causal=False)
            except UnsupportedError:
                return
            except Exception as e:
                raise AssertionError(f"causal=False raised {type(e).__name__}, want UnsupportedError: {e}") from e
            raise AssertionError("the plugin declares causal_only but computed causal=False instead of refusing it")

        fails.case("causal_only", refuses)
    fails.raise_any()


@check("finite_outputs_and_gradients")
def finite_outputs_and_gradients(s: Suite):
    fails = _Failures()
    for n_q, n_k, causal, pad in s.cases():

        def one(n_q=n_q, n_k=n_k, causal=causal, pad=pad):
            q, k, v = (t.requires_grad_() for t in s.inputs(n_q, n_k))
            kpm = _padding(s.batch, n_k, s.device) if pad else None
            out = s.call(q, k, v, causal=causal, key_padding_mask=kpm)
            assert tuple(out.shape) == tuple(q.shape), f"output shape {tuple(out.shape)}, want {tuple(q.shape)}"
            assert torch.isfinite(out).all(), "non-finite output"
            if pad and s.batch > 1:
                worst = out[1].abs().max().item()
                assert worst == 0, (
                    f"batch row 1 is fully padded (key_padding_mask all True), so its output must be zeros; "
                    f"max |out| there is {worst:.2e}"
                )
            out.square().sum().backward()
            for nm, t in zip("qkv", (q, k, v)):
                assert t.grad is not None, f"no gradient reaches {nm}"
                assert torch.isfinite(t.grad).all(), f"non-finite gradient of {nm}"

        fails.case(_label(n_q, n_k, causal, pad), one)
    fails.raise_any()
    return f"{len(s.cases())} cases"


@check("pattern_exercised")
def pattern_exercised(s: Suite):
    if not s.facts.exact or getattr(s.attn, "dense_mask", None) is None:
        raise Skip("approximate plugin: no pattern to exercise")
    lens = ", ".join(map(str, s.seq_lens))
    assert s.pattern_problem is None, s.pattern_problem
    if s.sparse_from is None:
        up_to = f"up to {s.n_max}" + (f" ({s.refused})" if s.refused else "")
        raise Skip(
            f"the pattern was never exercised: dense_mask attends every pair at every length {up_to} "
            "(a full pattern; otherwise pass options that make it sparse, e.g. window=16)"
        )
    return f"dense_mask excludes pairs from n={s.sparse_from}; exactness checked at n = {lens}"


@check("exact_vs_reference")
def exact_vs_reference(s: Suite):
    if not s.facts.exact:
        raise Skip("approximate plugin")
    dense_mask = getattr(s.attn, "dense_mask", None)
    assert dense_mask is not None, "an exact plugin must have dense_mask(n_q, n_k, causal)"
    fails, worst = _Failures(), [0.0]
    for n_q, n_k, causal, pad in s.cases():

        def one(n_q=n_q, n_k=n_k, causal=causal, pad=pad):
            q, k, v = s.inputs(n_q, n_k, seed_offset=1)
            kpm = _padding(s.batch, n_k, s.device) if pad else None
            m = dense_mask(n_q, n_k, causal=causal).to(s.device)
            assert tuple(m.shape) == (n_q, n_k) and m.dtype == torch.bool, (
                f"dense_mask returned {m.dtype} {tuple(m.shape)}, want torch.bool ({n_q}, {n_k})"
            )
            allowed = m if kpm is None else (m & ~kpm[:, None, None, :])
            qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
            q32, k32, v32 = (t.detach().clone().requires_grad_() for t in (q, k, v))
            ref = reference_attention(qr, kr, vr, allowed)
            out = s.call(q32, k32, v32, causal=causal, key_padding_mask=kpm)
            if pad and s.batch > 1 and out[1].abs().max() != 0:
                raise AssertionError(
                    "batch row 1 is fully padded (key_padding_mask all True), so its output must be zeros; "
                    f"max |out| there is {out[1].abs().max().item():.2e}"
                )
            err = _rel_err(out, ref)
            assert err <= EXACT_RTOL, f"forward relative error {err:.2e} > {EXACT_RTOL:g} against dense_mask's pattern"
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(s.device)
            (ref * g.double()).sum().backward()
            (out * g).sum().backward()
            for nm, a, b in zip("qkv", (q32, k32, v32), (qr, kr, vr)):
                if b.grad.norm() == 0:
                    # exactly zero in float64 (n_k = 1, or a window of 0): float32 roundoff is
                    # allowed, measured against the scale of the value gradient
                    small = 0.0 if a.grad is None else float(a.grad.norm() / vr.grad.norm().clamp_min(1e-30))
                    assert small <= EXACT_RTOL, f"gradient of {nm} should be 0, relative size {small:.1e}"
                    continue
                assert a.grad is not None, f"no gradient reaches {nm}"
                e = _rel_err(a.grad, b.grad)
                assert e <= EXACT_RTOL, f"gradient of {nm}: relative error {e:.2e} > {EXACT_RTOL:g}"
                worst[0] = max(worst[0], e)
            worst[0] = max(worst[0], err)

        fails.case(_label(n_q, n_k, causal, pad), one)
    fails.raise_any()
    return f"worst relative error {worst[0]:.1e} over {len(s.cases())} cases at n = {', '.join(map(str, s.seq_lens))}"


def _unchanged(before, after, what: str) -> None:
    """Outputs that must not move when `what` changes: equal within float32 roundoff of their scale."""
    scale = before.detach().abs().max().clamp_min(1e-30)
    moved = float((after.detach() - before.detach()).abs().max() / scale)
    assert moved <= EXACT_RTOL, f"changing {what} moved the output by {moved:.1e} of its scale"


@check("causal_no_future_leak")
def causal_no_future_leak(s: Suite):
    """By gradients (no path from a later position) and by values (new values at later positions
    leave earlier outputs unchanged: a path through a detached statistic has no gradient)."""
    if not s.facts.supports_causal:
        raise Skip("causal not supported")
    n = s.n_max
    q, k, v = (t.requires_grad_() for t in s.inputs(n, n, batch=1))
    out = s.call(q, k, v, causal=True)
    fails = _Failures()
    if n > 1:

        def by_value():
            t = n // 2
            later = s.inputs(n, n, batch=1, seed_offset=99)
            q2, k2, v2 = (torch.cat([a.detach()[:, :, : t + 1], b[:, :, t + 1 :]], 2) for a, b in zip((q, k, v), later))
            with torch.no_grad():
                out2 = s.call(q2, k2, v2, causal=True)
            _unchanged(out[:, :, : t + 1], out2[:, :, : t + 1], f"q, k and v after position {t}")

        fails.case(f"n={n}, outputs up to position {n // 2}", by_value)
    for t in sorted({0, n // 3, n - 2}):
        if t < 0 or t >= n - 1:
            continue

        def one(t=t):
            grads = torch.autograd.grad(out[:, :, t].sum(), (q, k, v), retain_graph=True, allow_unused=True)
            for nm, gr in zip("qkv", grads):
                assert gr is None or torch.isfinite(gr).all(), f"non-finite gradient of {nm} (see the other checks)"
                leak = 0.0 if gr is None else gr[:, :, t + 1 :].abs().max().item()
                assert leak == 0, f"the output at position {t} depends on {nm} after {t} (max |grad| {leak:.2e})"

        fails.case(f"n={n}", one)
    fails.raise_any()


@check("padding_no_leak")
def padding_no_leak(s: Suite):
    if not s.facts.supports_padding:
        raise Skip("key_padding_mask not supported")
    n = s.n_max
    q, k, v = (t.requires_grad_() for t in s.inputs(n, n))
    kpm = _padding(s.batch, n, s.device)
    out = s.call(q, k, v, key_padding_mask=kpm, **s.plain)
    gk, gv = torch.autograd.grad(out.sum(), (k, v), allow_unused=True)
    pad = kpm[:, None, :, None].expand(s.batch, s.heads, n, s.head_dim)
    fails = _Failures()
    for nm, gr in (("k", gk), ("v", gv)):

        def one(gr=gr):
            leak = 0.0 if gr is None or not pad.any() else gr[pad].abs().max().item()
            assert leak == 0, f"the output depends on padded positions (max |grad| {leak:.2e})"

        fails.case(f"n={n}, gradient of {nm}", one)

    def by_value():
        other = s.inputs(n, n, seed_offset=99)
        keep = ~kpm[:, None, :, None]
        k2, v2 = (torch.where(keep, a.detach(), b) for a, b in zip((k, v), other[1:]))
        with torch.no_grad():
            out2 = s.call(q.detach(), k2, v2, key_padding_mask=kpm, **s.plain)
        _unchanged(out, out2, "the padded keys and values")

    fails.case(f"n={n}, outputs", by_value)
    fails.raise_any()


@check("leaves_inputs_and_process_alone")
def leaves_inputs_and_process_alone(s: Suite):
    """A call changes neither q, k, v and the mask nor the process (thread count, matmul precision,
    TF32, torch's functions): effattn measures many plugins in one process. What changed is undone."""
    n = min(s.n_max, 77)
    q, k, v = s.inputs(n, n)
    kpm = _padding(s.batch, n, s.device) if s.facts.supports_padding else None
    before = [t.clone() for t in (q, k, v)] + ([kpm.clone()] if kpm is not None else [])
    guard = TorchState()
    try:
        with torch.no_grad():
            s.call(q, k, v, key_padding_mask=kpm, **s.plain) if kpm is not None else s.call(q, k, v, **s.plain)
    finally:
        state = guard.restore()
    changed = state.split("; ") if state else []
    names = ["q", "k", "v", "key_padding_mask"]
    changed += [f"modified {nm} in place" for nm, a, b in zip(names, before, (q, k, v, kpm)) if not torch.equal(a, b)]
    assert not changed, "; ".join(changed) + " (undone)"


@check("deterministic")
def deterministic(s: Suite):
    q, k, v = s.inputs(s.n_max, s.n_max)
    torch.manual_seed(s.seed)
    a = s.build().to(s.device)
    out1, out2 = a(q, k, v, **s.plain), a(q, k, v, **s.plain)
    torch.manual_seed(s.seed + 12345)  # a rebuilt plugin must not depend on the global RNG state...
    if s.rebuilds_from_name:  # ...unless it was handed over built (then it is the same module)
        torch.manual_seed(s.seed)
    out3 = s.build().to(s.device)(q, k, v, **s.plain)
    assert all(torch.isfinite(o).all() for o in (out1, out2, out3)), "non-finite output (see the other checks)"
    assert torch.equal(out1, out2), "two calls on the same input differ"
    assert torch.equal(out1, out3), "two plugins built with the same seed differ"


def _kv_heads(h: int) -> list[int]:
    """Key/value head counts to try with h query heads: multi-query (1) and, where it differs, h/2."""
    return sorted({1, h // 2} - {0, h}) if h > 1 else []


@check("grouped_query_heads")
def grouped_query_heads(s: Suite):
    """k, v with K < H heads equal the same call with each key/value head repeated over its group
    of H / K query heads (query head h reads key/value head h // (H / K))."""
    if not s.facts.supports_gqa:
        raise Skip("the plugin does not declare supports_gqa")
    kvs = _kv_heads(s.heads)
    if not kvs:
        raise Skip("one query head: no grouping to check (run with heads >= 2)")
    fails = _Failures()
    for K in kvs:
        for n_q, n_k, causal, pad in s.cases():

            def one(n_q=n_q, n_k=n_k, causal=causal, pad=pad, K=K):
                q, k, v = s.inputs(n_q, n_k, seed_offset=7)
                k, v = k[:, :K].contiguous(), v[:, :K].contiguous()
                kpm = _padding(s.batch, n_k, s.device) if pad else None
                out = s.call(q, k, v, causal=causal, key_padding_mask=kpm)
                rep = s.heads // K
                want = s.call(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), causal=causal,
                              key_padding_mask=kpm)  # fmt: skip
                assert tuple(out.shape) == tuple(q.shape), f"output shape {tuple(out.shape)}, want {tuple(q.shape)}"
                err = _rel_err(out, want)
                assert err <= EXACT_RTOL, f"K={K}: relative error {err:.2e} against k, v repeated to {s.heads} heads"

            fails.case(f"K={K} " + _label(n_q, n_k, causal, pad), one)
    fails.raise_any()
    return f"K = {', '.join(map(str, kvs))} of {s.heads} heads, {len(s.cases())} cases each"


#: steps decoded in the longest run of `decode_matches_causal_forward`, and the prompt lengths
DECODE_STEPS, DECODE_PROMPTS = 320, (1, 17, 64)
#: relative error allowed between decoding and the causal forward, for an approximate plugin that
#: does not state its own (`decode_rtol`)
DECODE_RTOL_APPROX = 1e-4


@check("decode_matches_causal_forward")
def decode_matches_causal_forward(s: Suite):
    """Prefill then step by step equals the causal forward: the prefill's output is the prompt's
    causal output, and step t's is the last row of the causal forward over the p + t + 1 tokens
    seen (compared to one forward over the whole sequence first; where a row differs - a pattern
    that depends on the length, like BigBird's last global block - to the forward over exactly that
    prefix). Several prompt lengths, over DECODE_STEPS steps; with a left-padded prompt where the
    plugin takes padding, and with fewer key/value heads where it takes grouped-query heads."""
    if not s.facts.supports_decode:
        raise Skip("the plugin does not declare supports_decode (it is decoded by recomputation)")
    from .decoding import cache_nbytes, decoder_for

    rtol = EXACT_RTOL if s.facts.exact else float(getattr(s.attn, "decode_rtol", DECODE_RTOL_APPROX))
    try:
        dec = decoder_for(s.attn)
    except Exception as e:
        raise AssertionError(str(e)) from e
    kvs = _kv_heads(s.heads) if s.facts.supports_gqa else []
    runs = [(DECODE_PROMPTS[0], DECODE_STEPS, s.heads, False)]
    runs += [(p, 40, s.heads, s.facts.supports_padding) for p in DECODE_PROMPTS[1:]]
    runs += [(DECODE_PROMPTS[1], 40, K, False) for K in kvs]
    fails, worst, steps = _Failures(), [0.0], [0]
    batch = max(2, s.batch) if s.facts.supports_padding else s.batch
    for p, T, K, padded in runs:

        def one(p=p, T=T, K=K, padded=padded):
            n = p + T
            q, k, v = _inputs(batch, s.heads, n, n, s.head_dim, torch.float32, s.device, s.seed + 11)
            k, v = k[:, :K].contiguous(), v[:, :K].contiguous()
            kpm = None
            if padded:  # row 1's prompt is left-padded by a third, as a batch of prompts would be
                kpm = torch.zeros(batch, n, dtype=torch.bool, device=s.device)
                kpm[1, : max(1, p // 3)] = True

            def forward(m):
                mask = None if kpm is None else kpm[:, :m]
                return s.call(q[:, :, :m], k[:, :, :m], v[:, :, :m], causal=True, key_padding_mask=mask)

            with torch.no_grad():
                try:
                    cache = dec.new_cache(batch, K, s.head_dim, dtype=torch.float32, device=s.device)
                    out = dec.prefill(cache, q[:, :, :p], k[:, :, :p], v[:, :, :p],
                                      key_padding_mask=None if kpm is None else kpm[:, :p])  # fmt: skip
                except Exception as e:
                    raise PluginRaised(f"the plugin raised {type(e).__name__}: {e}") from e
                whole = forward(n)
                assert tuple(out.shape) == (batch, s.heads, p, s.head_dim), f"prefill output shape {tuple(out.shape)}"
                err = _rel_err(out, whole[:, :, :p])
                if err > rtol:
                    err = _rel_err(out, forward(p))
                assert err <= rtol, f"prefill of {p} tokens: relative error {err:.2e} against the causal forward"
                for t in range(T):
                    i = p + t
                    try:
                        row = dec.step(cache, q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1])
                    except Exception as e:
                        raise PluginRaised(f"step {t}: the plugin raised {type(e).__name__}: {e}") from e
                    assert isinstance(row, torch.Tensor) and tuple(row.shape) == (batch, s.heads, 1, s.head_dim), (
                        f"step {t} returned {tuple(row.shape) if isinstance(row, torch.Tensor) else type(row).__name__}"
                        f", want {(batch, s.heads, 1, s.head_dim)}"
                    )
                    err = _rel_err(row, whole[:, :, i : i + 1])
                    if err > rtol:  # the definition: the last row of the forward over this prefix
                        err = _rel_err(row, forward(i + 1)[:, :, -1:])
                    worst[0] = max(worst[0], err)
                    assert err <= rtol, f"step {t} (token {i}): relative error {err:.2e} against the causal forward"
                    steps[0] += 1
                length = getattr(cache, "length", None)
                assert length in (None, n), f"the cache says it holds {length} tokens after {n}"
                if hasattr(cache, "nbytes"):
                    nb = cache_nbytes(cache)
                    assert nb is not None and nb >= 0, "the cache's nbytes() is not a number of bytes"

        where = f"prompt {p}, {T} steps" + (f", K={K}" if K != s.heads else "") + (", padded" if padded else "")
        fails.case(where, one)
    fails.raise_any()
    return f"{steps[0]} steps over {len(runs)} runs; worst relative error {worst[0]:.1e} (allowed {rtol:g})"


def _mask_problem(mask, n: int) -> str | None:
    """Why dense_mask(n, n) cannot be used, or None."""
    try:
        m = mask(n, n, causal=False)
    except Exception as e:  # noqa: BLE001 - reported by pattern_exercised, by name
        return f"dense_mask({n}, {n}) raised {type(e).__name__}: {e}"
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (n, n):
        got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
        return f"dense_mask({n}, {n}) returned {got}, want a torch.bool ({n}, {n}) tensor"
    return None


def _sparse_from(attn, facts: Facts, seq_lens) -> tuple[tuple[int, ...], int | None, str | None]:
    """The lengths to check, the first at which the plugin's dense_mask excludes a pair, and what
    was wrong with dense_mask if anything: the asked lengths, then 2n + 1 from the longest, up
    to PATTERN_BOUND, until one excludes a pair."""
    lens = sorted(set(seq_lens))
    mask = getattr(attn, "dense_mask", None)
    if not facts.exact or mask is None:
        return tuple(lens), None, None
    if not callable(mask):
        return tuple(lens), None, f"dense_mask is a {type(mask).__name__}, not a method"

    def sparse(n):
        problem = _mask_problem(mask, n)
        if problem:
            raise ValueError(problem)
        return not bool(mask(n, n, causal=False).all())

    try:
        for n in lens:
            if sparse(n):
                return tuple(lens), n, None
        n = lens[-1]
        while n < PATTERN_BOUND:
            n = min(2 * n + 1, PATTERN_BOUND)
            lens.append(n)
            if sparse(n):
                return tuple(lens), n, None
    except ValueError as e:
        return tuple(sorted(set(seq_lens))), None, str(e)
    return tuple(lens), None, None


def _accepted(attn, lens: tuple[int, ...], asked, device) -> tuple[tuple[int, ...], str | None]:
    """Drop the lengths the search added that the plugin refuses (UnsupportedError: a maximum
    length, say), longest first; say which and why."""
    from .errors import UnsupportedError

    added = [n for n in lens if n not in set(asked)]
    refused = None
    for n in sorted(added, reverse=True):
        q = torch.zeros(1, 1, n, 4, device=device)
        try:
            attn(q, q, q, **({"causal": True} if getattr(attn, "causal_only", False) else {}))
        except UnsupportedError as e:
            refused = f"the plugin refused n >= {n}: {e}"
            lens = tuple(m for m in lens if m < n)
            continue
        except Exception:  # noqa: BLE001 - any other failure is the checks' to report
            pass
        break
    return lens, refused


def _suite(name_or_module, seq_lens, batch, heads, head_dim, device, seed, options) -> Suite:
    if isinstance(name_or_module, str):

        def build():
            return create_attention(name_or_module, **options)
    else:
        module = name_or_module

        def build():
            return module

    torch.manual_seed(seed)
    first = build()
    if not isinstance(first, torch.nn.Module):
        raise TypeError(f"the plugin is a {type(first).__name__}, not a torch.nn.Module")
    first = first.to(device)
    facts = Facts.of(first)
    lens, sparse_from, problem = _sparse_from(first, facts, seq_lens)
    lens, refused = _accepted(first, lens, seq_lens, device)
    if sparse_from is not None and sparse_from not in lens:
        sparse_from = None
    return Suite(build, isinstance(name_or_module, str), facts, device, batch, heads, head_dim, seed, lens,
                 sparse_from, problem, refused)  # fmt: skip


def run_checks(
    name_or_module,
    *,
    seq_lens=(1, 23, 77),
    batch: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    device: str = "cpu",
    seed: int = 0,
    only: str | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    **options,
) -> list[CheckResult]:
    """Run every check (or only the one named `only`) and return the results; never raises for
    a failed check. `seq_lens` are the first lengths; the pattern search may add longer ones.
    `on_result` is told each result as soon as its check ends (the CLI prints it then)."""
    names = [n for n, _ in CHECKS]
    lens = list(seq_lens) if isinstance(seq_lens, (list, tuple)) else None
    if not lens or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHECK_LEN for n in lens):
        raise ValueError(
            f"seq_lens {seq_lens!r}: give lengths from 1 to {MAX_CHECK_LEN} (the checks build a dense float64 "
            "reference, n x n)"
        )
    if only is not None and only not in names:
        raise ValueError(f"no check named {only!r}; the checks are {', '.join(names)}")
    try:
        suite = _suite(name_or_module, seq_lens, batch, heads, head_dim, device, seed, options)
    except Exception as e:  # noqa: BLE001 - a plugin that cannot be built fails, by name, never crashes the suite
        why = f"the plugin could not be built: {type(e).__name__}: {e}"
        results = [CheckResult("build", False, why)] + [
            CheckResult(name, True, "not run: the plugin could not be built", skipped=True)
            for name in names
            if only is None or name == only
        ]
        for r in results if on_result else ():
            on_result(r)
        return results
    results = []
    for name, fn in CHECKS:
        if only is not None and name != only:
            continue
        guard = TorchState()  # what a check's calls change in the process is undone after it
        try:
            detail = fn(suite)
        except Skip as e:
            results.append(CheckResult(name, True, str(e), skipped=True))
        except (AssertionError, PluginRaised) as e:
            results.append(CheckResult(name, False, str(e)))
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, reported by name
            results.append(CheckResult(name, False, f"the plugin raised {type(e).__name__}: {e}"))
        else:
            results.append(CheckResult(name, True, detail or ""))
        finally:
            guard.restore()  # (leaves_inputs_and_process_alone reports it; the others only undo it)
        if on_result:
            on_result(results[-1])
    return results


def summarize(results: list[CheckResult]) -> str:
    """`5 passed, 1 failed, 2 skipped`."""
    count = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    return f"{count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped"


def check_attention(name_or_module, **kwargs) -> list[CheckResult]:
    """Run the suite; raise AssertionError naming every failed check and its failing cases.
    Returns the results."""
    results = run_checks(name_or_module, **kwargs)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise AssertionError(
            f"{summarize(results)}\n" + "\n".join(f"{r.name}: " + r.detail.replace("\n", "\n    ") for r in failed)
        )
    return results


def conformance_tests(name_or_module, **kwargs):
    """A pytest test function, parametrized over the checks, for a plugin package's own tests:

        test_my_window = conformance_tests("my_window", w=3)

    Each check is its own test; one that does not apply is a pytest skip with its reason."""
    import pytest

    @pytest.mark.parametrize("check_name", [n for n, _ in CHECKS])
    def test_conformance(check_name):
        (r,) = run_checks(name_or_module, only=check_name, **kwargs)
        if r.skipped:
            pytest.skip(r.detail)
        assert r.passed, f"{r.name}: {r.detail}"

    return test_conformance
