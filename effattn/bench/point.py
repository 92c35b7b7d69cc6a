"""One point of a sweep - a variant at one length - prepared for timing in small named stages.

    build -> budget -> first call -> steady memory -> useful work -> error columns -> exactness

Each stage reads and fills a `Point` (the spec, its level and mode, the module and inputs) and its
`Measurement`; a stage that finds the point cannot be `ok` raises `PointEnded` with the status and
the reason, and whatever else a stage raises is recorded by its evidence (`record_failure`). What
comes out is a `Prepared`: the measurement, and for a point still `ok` the call the rounds time.

A point is `ok` only when it was measured correctly: the estimated memory fitted the budget before
anything was allocated, and the measured peak fitted it after; the output (and under `fwdbwd` the
gradients of q, k and v) had the right shape, dtype and finite values; an exact plugin computed
its declared pattern, to its dtype's rounding (`effattn.bench.exactness`); and its FLOP count is
exact. A reference for the error columns that would outlast the --timeout is left out and said
so; it never changes the point's status.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field

import torch

from .. import contract
from ..errors import EffattnError, UnsupportedError
from ..reference import ReferenceTimeout, full_reference
from . import exactness, measure
from .levels import Level, Mode, level_of, mode_of
from .measurement import MAX_TRACEBACK, Measurement, PointEnded
from .spec import Config, PointSpec
from .timing import is_oom
from .validate import CoreWatch, check_output

#: set in a measuring process: there a KeyboardInterrupt can only come from plugin code
IN_MEASURING_PROCESS = False


@dataclass
class Prepared:
    """A point after everything but its timing: its measurement, and for a point still `ok` the
    call to time, one warm call's duration (it sizes the timed blocks) and the cores to watch."""

    measurement: Measurement
    step: object = None
    per_call_s: float = 0.0
    cores: list = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.step is not None and self.measurement.ok


class InputSet:
    """The inputs of one length, shared by the variants measured together, created once (after the
    first variant's memory estimate passed) with a pristine copy: a plugin that modifies its
    inputs in place is an error, and the others get the inputs back as they were. Also the cache
    of the references computed on them (`reference`)."""

    def __init__(self, spec: Config, n: int):
        self.spec, self.n, self.tensors, self._pristine = spec, n, None, None
        self.matmul_gflops: float | None = None  # the group's reference rate: sizes the error references
        self._references: dict = {}

    def get(self):
        if self.tensors is None:
            spec, level = self.spec, level_of(self.spec)
            n = self.n + 1 if spec.mode == "decode" else self.n  # decode: a context of n tokens, then the next
            g = torch.Generator().manual_seed(spec.seed + self.n)
            self.tensors = level.inputs(spec, n, spec.mode == "fwdbwd" and level.has_qkv, g)
            self._pristine = [t.detach().clone() for t in self.tensors]
        return self.tensors

    def reference(self, key, compute):
        """A reference output on these inputs (`full`'s, a pattern's), computed once and shared by
        the variants of the length; one that timed out is not tried again."""
        if key not in self._references:
            try:
                self._references[key] = compute()
            except ReferenceTimeout as e:  # the next variant would wait as long again: said once, kept
                self._references[key] = e
        got = self._references[key]
        if isinstance(got, ReferenceTimeout):
            raise got
        return got

    def drop_references(self) -> None:
        self._references = {}

    def intact(self) -> bool:
        """True when no plugin has changed the inputs; else restore them and say False."""
        if self.tensors is None:
            return True
        ok = all(torch.equal(t.detach(), p) for t, p in zip(self.tensors, self._pristine))
        if not ok:
            with torch.no_grad():
                for t, p in zip(self.tensors, self._pristine):
                    t.copy_(p)
        return ok


class Point:
    """What the stages of one point share."""

    def __init__(self, spec: PointSpec, inputs: InputSet, tick=None):
        self.spec, self.inputs = spec, inputs
        self.level: Level = level_of(spec)
        self.mode: Mode = mode_of(spec)
        self.m = Measurement(spec)
        self.beat = (lambda: tick(spec.label)) if tick is not None else (lambda: None)
        self.module = self.core = self.tensors = self.step = self.watch = None
        self.cores: list = []
        self.outs: list = []  # two outputs of one input (fwd, attention level): for the checks
        self.per_call_s = math.inf
        self.lost = False  # the profiler lost a call's events: the memory is unknown

    def build(self, seed_first: bool = True):
        if seed_first:
            torch.manual_seed(self.spec.seed)
        return self.level.build(self.spec)

    def step_of(self, module):
        call = lambda: self.level.call(module, self.tensors, self.spec.causal)
        return self.mode.step(module, call, self.tensors, self.beat)

    def clean_step(self):
        out = self.step()
        self.module.zero_grad(set_to_none=True)
        return out

    def check_intact(self) -> None:
        if not self.inputs.intact():
            raise PointEnded("error", f"{self.spec.label} modified its inputs in place")


def prepare_point(spec: PointSpec, inputs: InputSet, tick=None) -> Prepared:
    """Everything of a point but its timing (the stages above). Never raises for the point's own
    failure. `tick(label)`, if given, is called as each call of the attention starts (the
    measuring process's heartbeat)."""
    p = Point(spec, inputs, tick)
    try:
        for stage in (build, budget, first_call, steady_memory, useful_work, error_columns, exact_pattern):
            stage(p)
        p.check_intact()
        return Prepared(p.m, p.clean_step, p.per_call_s, p.cores)
    except PointEnded as e:
        p.m.end(e.status, e.reason)
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure is a recorded status
        record_failure(p.m, p.watch, e)
    return Prepared(p.m)


# ------------------------------------------------------------------------------------ the stages
def build(p: Point) -> None:
    """A fresh module; a plugin asked for what it declares it cannot do is `unsupported`."""
    p.beat()
    p.module = p.build()
    p.cores = p.level.cores(p.module)
    p.core = p.cores[0]
    facts = contract.facts(p.core)
    if p.spec.causal and not facts.supports_causal:
        raise PointEnded("unsupported", f"{p.spec.label} does not support causal attention")
    if p.spec.dtype not in facts.dtypes:
        raise PointEnded("unsupported", f"{p.spec.label} declares dtypes {', '.join(facts.dtypes)}, not {p.spec.dtype}")


def estimate_bytes(spec: PointSpec, core) -> tuple[int, str]:
    """A lower bound on what the point allocates, known before anything is allocated: the inputs
    and outputs its level implies (and their gradients), plus what the plugin declares through its
    `min_memory_bytes`."""
    est, parts = level_of(spec).estimate_bytes(spec)
    es = torch.empty(0, dtype=spec.torch_dtype).element_size()
    grad = spec.mode == "fwdbwd"
    B, H, n, D = spec.batch, spec.heads, spec.n, spec.head_dim
    extra = contract.min_memory_bytes(core, B, H, n, n, D, es, spec.causal, grad)
    if extra > 0:
        est += extra
        parts.append(f"the plugin's own {_gib(extra)}")
    return est, " + ".join(parts)


def budget(p: Point) -> None:
    """The estimate against the budget (or the memory available), before the inputs exist."""
    est, parts = estimate_bytes(p.spec, p.core)
    if p.inputs.tensors is not None:  # allocated for an earlier variant of this length: not needed again
        est = max(0, est - measure.storage_bytes(p.inputs.tensors))
    limit = p.spec.memory_budget_bytes or measure.available_memory_bytes(p.spec.device)
    p.m.estimated_bytes = est
    if est > limit:
        budget = p.spec.memory_budget_bytes
        what = f"the memory budget {_gib(limit)}" if budget else f"the {_gib(limit)} of memory available"
        raise PointEnded("oom", f"needs at least {_gib(est)} ({parts}) > {what}; not attempted")
    p.tensors = p.inputs.get()
    p.m.input_bytes = measure.storage_bytes(p.tensors)


def first_call(p: Point) -> None:
    """The first call of the fresh module: validated, timed, its memory measured (what it creates
    and keeps - plans, workspaces, caches - counts). A profile that lost its events is taken
    again on a module built afresh; events still lost leave the memory unknown, never 0."""
    p.step = p.step_of(p.module)
    t0 = time.perf_counter()
    with CoreWatch(*p.cores) as p.watch:
        out, peak, net, seen = measure.profile_memory(p.step, p.spec.device, with_events=True)
        if p.mode.grad:
            p.watch.check_backward()
    first_ms = (time.perf_counter() - t0) * 1e3
    if p.watch.problem:
        raise PointEnded("error", p.watch.problem)
    if not p.watch.calls:
        raise PointEnded("error", f"the attention core of {p.spec.label} was never called")
    retained = max(0, net - measure.storage_bytes(_alive(p.module, [out])))
    p.module.zero_grad(set_to_none=True)
    for _ in range(2):
        if seen or not out.numel():
            break
        again = p.build()
        out, peak, net, seen = measure.profile_memory(p.step_of(again), p.spec.device, with_events=True)
        retained = max(0, net - measure.storage_bytes(_alive(again, [out])))
        del again
    p.lost = not seen and bool(out.numel())
    del out
    p.check_intact()
    p.m.first_call_ms = first_ms
    if first_ms / 1e3 > p.spec.timeout_s:
        raise PointEnded("timeout", f"one call took {first_ms / 1e3:.1f} s > timeout {p.spec.timeout_s:g} s")
    p.m.backend = contract.last_backend(p.core)
    p.m.first_call_peak_mem_bytes, p.m.retained_bytes = peak, retained


def steady_memory(p: Point) -> None:
    """The peak of two more calls; what they too create and keep counts (a cache built on the
    second or third call is no less kept than one built on the first). The peak against the
    budget."""
    steady_peak, retained = 0, p.m.retained_bytes
    keep = not p.mode.grad and p.level.has_qkv
    for _ in range(2):
        for attempt in range(3):  # a profile that lost its events is taken again
            t0 = time.perf_counter()
            out, peak, net, seen = measure.profile_memory(p.clean_step, p.spec.device, with_events=True)
            p.per_call_s = min(p.per_call_s, time.perf_counter() - t0)  # sizes the rounds' blocks
            if seen or not out.numel() or attempt == 2:
                break
            out = None  # free it before the next try
        p.lost |= not seen and bool(out.numel())
        steady_peak = max(steady_peak, peak)
        retained += max(0, net - measure.storage_bytes([out]))
        if keep:
            p.outs.append(out.detach())
        del out
    m = p.m
    if p.lost:
        m.memory_unmeasured = "the profiler recorded no allocator event for a call, three times"
        m.first_call_peak_mem_bytes = m.retained_bytes = m.peak_mem_bytes = None
        return
    m.retained_bytes = retained
    m.peak_mem_bytes = max(m.first_call_peak_mem_bytes, retained + steady_peak)
    limit = p.spec.memory_budget_bytes
    if limit and m.input_bytes + m.peak_mem_bytes > limit:
        raise PointEnded(
            "oom", f"inputs {m.input_bytes} + peak {m.peak_mem_bytes} bytes exceed the memory budget {limit}"
        )


def useful_work(p: Point) -> None:
    """Useful FLOPs from the exact count of attended pairs (or an approximate plugin's own count
    of its algorithm's work)."""
    p.beat()
    n, spec = p.spec.n, p.spec
    pairs = contract.attended_pairs(p.core, n, n, spec.causal)
    if pairs is not None and not 0 <= pairs <= n * n:
        raise PointEnded("error", f"the plugin counts {pairs} attended pairs, outside 0..n^2 = {n * n}")
    m = p.m
    m.attended_pairs = pairs
    m.exact = bool(contract.facts(p.core).exact)
    if pairs is not None:
        m.flops, m.flops_basis = 4 * spec.batch * spec.heads * spec.head_dim * pairs * p.mode.pairs_factor, "pairs"
    if not m.exact:
        algo = contract.algorithm_flops(
            p.core, spec.batch, spec.heads, spec.key_heads, n, n, spec.head_dim, spec.causal
        )
        if algo is not None:
            m.flops, m.flops_basis = algo * p.mode.algorithm_factor, "algorithm"


def error_columns(p: Point) -> None:
    """Error against exact softmax (`full`, in the sweep's dtype), on these inputs; the reference
    is computed once per length and shared. One that cannot be computed within the --timeout
    leaves the columns empty, says why in `error_note`, and changes nothing else."""
    spec = p.spec
    if not (spec.error and p.level.has_qkv):
        return
    p.beat()
    q, k, v = (t.detach() for t in p.tensors)
    deadline = time.monotonic() + spec.timeout_s
    with torch.no_grad():
        out = p.outs[-1] if p.outs else None
        if out is None:
            p.beat()
            out = p.core(q, k, v, causal=spec.causal)
        problem = check_output(out, q, v, "output (error check)")
        if problem:
            raise PointEnded("error", problem)
        one_call = _predicted_full_s(spec, p.inputs.matmul_gflops) <= spec.timeout_s / 4
        try:
            ref = p.inputs.reference(
                ("full", spec.causal),
                lambda: full_reference(q, k, v, spec.causal, deadline=deadline, tick=p.beat, one_call=one_call),
            )
        except ReferenceTimeout as e:
            p.m.rel_err_vs_full = p.m.cosine_vs_full = None  # measured as unknown: the row says so
            p.m.error_note = f"not computed: {e}"
            return
        rel, cos = measure.output_errors(out, ref)
    if not (math.isfinite(rel) and math.isfinite(cos)):
        bad = ", ".join(n for n, x in (("rel_err_vs_full", rel), ("cosine_vs_full", cos)) if not math.isfinite(x))
        raise PointEnded("error", f"{bad} not finite: the output or the reference is not comparable")
    p.m.rel_err_vs_full, p.m.cosine_vs_full = rel, cos


def exact_pattern(p: Point) -> None:
    """An exact plugin computes its declared pattern, or the point is an error
    (`effattn.bench.exactness`)."""
    p.beat()
    spec = p.spec
    if p.level.has_qkv:
        qkv, reference = tuple(t.detach() for t in p.tensors), p.inputs.reference
    else:
        qkv, reference = exactness.synthetic_inputs(spec, spec.n), lambda key, compute: compute()
    outs = p.outs if len(p.outs) == 2 else None
    found, problem = exactness.check(spec, p.core, qkv, outs, reference, p.beat, time.monotonic() + spec.timeout_s)
    for name, value in found.items():
        setattr(p.m, name, value)
    p.outs = []
    if problem:
        raise PointEnded("error", problem)


# ------------------------------------------------------------------------------------- helpers
def record_failure(m: Measurement, watch, e: BaseException) -> None:
    """A point's own failure as its status and reason: oom (evidence of memory exhaustion only),
    unsupported, or error with the traceback. The user's Ctrl-C (outside a measuring process) is
    raised again."""
    if is_oom(e):
        first = str(e).splitlines()[0] if str(e) else ""
        m.end("oom", f"MemoryError: {e}" if isinstance(e, MemoryError) else first)
    elif isinstance(e, (UnsupportedError, EffattnError)):
        m.end("unsupported", str(e))
    elif isinstance(e, KeyboardInterrupt):
        if not IN_MEASURING_PROCESS:
            raise e  # the user's Ctrl-C, measuring in their own process
        _failed(m, watch, f"the plugin raised KeyboardInterrupt: {e}")
    elif isinstance(e, RuntimeError):
        _failed(m, watch, f"RuntimeError: {str(e).splitlines()[0] if str(e) else ''}")
    else:
        _failed(m, watch, f"{type(e).__name__}: {e}")


def _failed(m: Measurement, watch, reason: str) -> None:
    """An exception: when the watch saw a bad output first, that is the real reason."""
    problem = watch.problem if watch is not None else None
    m.end("error", problem or reason)
    m.traceback = traceback.format_exc(limit=6)[-MAX_TRACEBACK:]


def _alive(module, outputs) -> list:
    """Tensors we know stay allocated after a step: its output and the parameters' gradients."""
    return list(outputs) + [p.grad for p in module.parameters() if p.grad is not None]


def _predicted_full_s(spec: PointSpec, gflops: float | None) -> float:
    """Seconds exact attention at the point's length should take at half the measured matmul rate
    (SDPA reaches 80-87% of it); infinite when no rate is known."""
    if not gflops:
        return math.inf
    flops = 4 * spec.batch * spec.heads * spec.head_dim * spec.n * spec.n * (0.5 if spec.causal else 1.0)
    return flops / (0.5 * gflops * 1e9)


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"
