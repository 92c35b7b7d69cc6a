"""One point of a sweep: (variant, seq_len) under a sweep spec, measured in this process.

A point is `ok` only when it was measured correctly: the estimated memory fitted the budget
before anything was allocated, and the measured peak (torch's and the process's resident memory)
fitted it after; the output (and under `fwdbwd` the gradients of q, k and v) had the right shape,
dtype and finite values; an exact plugin computed its declared pattern, to its dtype's rounding
(`effattn.bench.exactness`); and its FLOP count is exact. Anything else is a status with its
reason. A reference for the error columns that would outlast the --timeout is left out and said
so; it never changes the point's status.
"""

from __future__ import annotations

import functools
import math
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch

from ..errors import EffattnError, UnsupportedError
from ..registry import Facts
from ..spec import Variant
from ..store import point_key  # noqa: F401  (the identity of a point lives in effattn.store)
from . import exactness, measure
from .validate import CoreWatch, check_output

LEVELS = ("attention", "layer", "model")
MODES = ("fwd", "fwdbwd", "decode")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float64", "bfloat16", "float16")
INPUTS = ("random", "trained")
#: a useful FLOP rate above this fraction of the measured matmul peak is a measurement fault
PEAK_FRACTION_MAX = 1.0
#: bounds on what a sweep may ask for (larger values are typos, not plans)
MAX_TIMEOUT_S, MAX_MIN_RUN_TIME_S, MAX_SEED = 7 * 24 * 3600.0, 3600.0, 2**62
#: the model level's backbone (see _build)
MODEL_LAYERS, MODEL_VOCAB = 2, 256


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EffattnError(f"{name} must be an integer >= 1, got {value!r}")


def _positive_finite(name, value, most):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise EffattnError(f"{name} must be a finite number > 0, got {value!r}")
    if value > most:
        raise EffattnError(f"{name} must be at most {most:g}, got {value!r}")


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep measures. Validated when built, with the same rules as the CLI's options, and
    frozen (`dataclasses.replace` makes a changed copy, validated again)."""

    seq_lens: list[int]
    variants: list[Variant]
    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    causal: bool = False
    mode: str = "fwd"
    level: str = "attention"
    timeout_s: float = 120.0
    memory_budget_bytes: int | None = None
    min_run_time_s: float = 0.2
    error: bool = True
    seed: int = 0
    inputs: str = "random"  # or "trained": q, k, v from a backbone trained on MQAR (attention level)
    kv_heads: int | None = None  # key/value heads (grouped-query); None: as many as `heads`
    layers: int = MODEL_LAYERS  # the backbone's layers at level 'model'

    def __post_init__(self):
        from ..registry import get_entry, option_names
        from ..store import MAX_SEQ_LEN

        for name in ("seq_lens", "variants"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise EffattnError(f"{name} must be a list, got {value!r}")
            object.__setattr__(self, name, list(value))
        lens = self.seq_lens
        if not lens:
            raise EffattnError("seq_lens is empty: give at least one sequence length")
        for n in lens:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_SEQ_LEN:
                raise EffattnError(f"sequence lengths must be integers in 1..{MAX_SEQ_LEN}, got {n!r}")
        if any(b <= a for a, b in zip(lens, lens[1:])):
            raise EffattnError(
                f"seq_lens must increase without repeats (a variant's longer lengths are skipped "
                f"after an oom or timeout), got {lens}; sorted: {sorted(set(lens))}"
            )
        for v in self.variants:
            if not isinstance(v, Variant):
                raise EffattnError(f"variants must be effattn.spec.Variant, got {type(v).__name__}")
            names, var_kw = option_names(get_entry(v.name).target)  # no plugin code runs here
            unknown = [k for k in v.options if k not in names]
            if unknown and not var_kw:
                raise EffattnError(
                    f"attention {v.name!r} has no option {', '.join(map(repr, unknown))}; "
                    f"valid options: {', '.join(names) or 'none'}"
                )
        if len({v.label for v in self.variants}) != len(self.variants):
            raise EffattnError("the same variant is listed twice")
        choices = {"device": DEVICES, "dtype": DTYPES, "mode": MODES, "level": LEVELS, "inputs": INPUTS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise EffattnError(f"{name} {getattr(self, name)!r}: choose {', '.join(allowed)}")
        for name in ("batch", "heads", "head_dim"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.causal, bool):
            raise EffattnError(f"causal must be a bool, got {self.causal!r}")
        if not isinstance(self.error, bool):
            raise EffattnError(f"error must be a bool, got {self.error!r}")
        _positive_finite("timeout_s", self.timeout_s, MAX_TIMEOUT_S)
        _positive_finite("min_run_time_s", self.min_run_time_s, MAX_MIN_RUN_TIME_S)
        if self.memory_budget_bytes is not None:
            _positive_int("memory_budget_bytes", self.memory_budget_bytes)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise EffattnError(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if self.inputs == "trained" and self.level != "attention":
            raise EffattnError("inputs 'trained' applies to level 'attention'")
        _positive_int("layers", self.layers)
        if self.layers != MODEL_LAYERS and self.level != "model":
            raise EffattnError(f"layers ({self.layers}) applies to level 'model' (the backbone), not {self.level!r}")
        if self.kv_heads is not None:
            _positive_int("kv_heads", self.kv_heads)
            if self.heads % self.kv_heads:
                raise EffattnError(f"kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
            if self.kv_heads == self.heads:
                object.__setattr__(self, "kv_heads", None)  # one spelling per configuration
        if self.mode == "decode":
            if not self.causal:
                raise EffattnError("mode 'decode' generates one token at a time: it is causal (set causal=True)")
            if self.inputs == "trained":
                raise EffattnError("inputs 'trained' is not available with mode 'decode'")

    def point_config(self) -> dict:
        d = asdict(self)
        for k in ("seq_lens", "variants"):
            d.pop(k)
        return d


def _inputs(spec: SweepSpec, n: int, requires_grad: bool):
    g = torch.Generator().manual_seed(spec.seed + n)
    dtype = getattr(torch, spec.dtype)
    if spec.mode == "decode":
        n = n + 1  # a context of n tokens, then the token a step decodes
    if spec.inputs == "trained" and spec.level == "attention":
        from .inputs import trained_qkv

        qkv, _ = trained_qkv(spec.batch, spec.heads, spec.head_dim, n, spec.seed)
        return tuple(t.to(device=spec.device, dtype=dtype).requires_grad_(requires_grad) for t in qkv)
    mk = lambda *shape: (
        torch.randn(*shape, generator=g).to(device=spec.device, dtype=dtype).requires_grad_(requires_grad)
    )
    B, H, D = spec.batch, spec.heads, spec.head_dim
    K = spec.kv_heads or H
    if spec.level == "attention":
        return mk(B, H, n, D), mk(B, K, n, D), mk(B, K, n, D)
    if spec.level == "layer":
        return (mk(B, n, H * D),)
    return (torch.randint(0, MODEL_VOCAB, (B, n), generator=g).to(spec.device),)


def _build(spec: SweepSpec, variant: Variant):
    dtype = getattr(torch, spec.dtype)
    if spec.level == "attention":
        return variant.build().to(spec.device, dtype)
    if spec.level == "layer":
        from ..model import MultiHeadAttention

        return MultiHeadAttention(
            spec.heads * spec.head_dim,
            spec.heads,
            variant.name,
            variant.options,
            causal=spec.causal,
            n_kv_heads=spec.kv_heads,
        ).to(spec.device, dtype)
    from ..model import Transformer, TransformerConfig

    cfg = TransformerConfig(
        vocab_size=MODEL_VOCAB,
        d_model=spec.heads * spec.head_dim,
        n_heads=spec.heads,
        n_kv_heads=spec.kv_heads,
        n_layers=spec.layers,
        d_ff=4 * spec.heads * spec.head_dim,
        dropout=0.0,
        attention=variant.name,
        attention_options=variant.options,
    )
    return Transformer(cfg, "decoder" if spec.causal else "encoder").to(spec.device, dtype)


def _core(module, level):
    """The first attention core (whose facts stand for the variant)."""
    return _cores(module, level)[0]


def _cores(module, level) -> list:
    """Every attention core of the module: the plugin itself, a layer's, or each layer's (self-
    and cross-attention) in the backbone."""
    if level == "attention":
        return [module]
    from ..model import MultiHeadAttention

    return [m.core for m in module.modules() if isinstance(m, MultiHeadAttention)]


def base_row(spec: SweepSpec, variant: Variant, n: int) -> dict:
    """What every row of this point says it is, whatever became of it."""
    row = {
        "variant": variant.name,
        "options": variant.options,
        "label": variant.label,
        "seq_len": n,
        **spec.point_config(),
        **_provenance(variant.name),
    }
    row.pop("min_run_time_s", None)
    return row


@functools.cache
def _provenance_cached(name: str) -> tuple:
    from ..registry import provenance

    try:
        return tuple(provenance(name).items())
    except EffattnError:  # an unknown or broken plugin: its row says so elsewhere
        return (("plugin_dist", None), ("plugin_version", None), ("plugin_wraps", None))


def _provenance(name: str) -> dict:
    """The distribution and version that provided the plugin (and what a wrapper wraps)."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _provenance_cached(name)}


def estimate_bytes(spec: SweepSpec, core, n: int) -> tuple[int, str]:
    """A lower bound on what the point allocates, known before anything is allocated: the inputs
    and outputs the level implies (and their gradients), plus what the plugin declares through an
    optional `min_memory_bytes(batch, heads, n_q, n_k, head_dim, element_size, causal, grad)`."""
    es = torch.empty(0, dtype=getattr(torch, spec.dtype)).element_size()
    B, H, D = spec.batch, spec.heads, spec.head_dim
    grad = spec.mode == "fwdbwd"
    act = B * H * n * D * es  # one (B, H, n, D) or (B, n, H*D) tensor
    if spec.level == "attention":  # q and out with H heads, k and v with K
        est = (2 * act + 2 * B * (spec.kv_heads or H) * n * D * es) * (2 if grad else 1)
    else:
        est = act * {"layer": 6, "model": 6 * spec.layers}[spec.level] * (2 if grad else 1)  # x, q, k, v, proj, out
    parts = [f"inputs and outputs {_gib(est)}"]
    if spec.level == "model":
        logits = B * n * max(MODEL_VOCAB, H * D) * es
        est += logits
    declared = getattr(core, "min_memory_bytes", None)
    if callable(declared):
        extra = int(declared(B, H, n, n, D, es, spec.causal, grad))
        if extra > 0:
            est += extra
            parts.append(f"the plugin's own {_gib(extra)}")
    return est, " + ".join(parts)


def over_budget(spec: SweepSpec, core, n: int, inputs, row: dict) -> str | None:
    """Why the point cannot fit (its estimate above the budget, or above the memory available),
    before anything is allocated; None when it may go on. Sets row["estimated_bytes"]."""
    est, parts = estimate_bytes(spec, core, n)
    if inputs.tensors is not None:  # allocated for an earlier variant of this length: not needed again
        est = max(0, est - measure.storage_bytes(inputs.tensors))
    budget = spec.memory_budget_bytes
    limit = budget if budget else measure.available_memory_bytes(spec.device)
    row["estimated_bytes"] = est
    if est <= limit:
        return None
    what = f"the memory budget {_gib(budget)}" if budget else f"the {_gib(limit)} of memory available"
    return f"needs at least {_gib(est)} ({parts}) > {what}; not attempted"


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def _alive(module, outputs) -> list:
    """Tensors we know stay allocated after a step: its output and the parameters' gradients."""
    return list(outputs) + [p.grad for p in module.parameters() if p.grad is not None]


#: the longest reason and traceback a row keeps (a plugin's 8 MB message would swell the file)
MAX_REASON, MAX_TRACEBACK = 2000, 8000
#: set in a measuring process: there a KeyboardInterrupt can only come from plugin code
IN_MEASURING_PROCESS = False


@dataclass
class Prepared:
    """A point after everything but its timing: a final row (a failure), or a row still to be
    timed with the call to time and one warm call's duration."""

    variant: Variant
    row: dict
    step: object = None  # the timed call, for points still `ok`
    per_call_s: float = 0.0  # one warm call, to size the timed blocks
    cores: list = field(default_factory=list)  # the attention cores, watched on the last call

    @property
    def ready(self) -> bool:
        return self.step is not None


class InputSet:
    """The inputs of one length, shared by the variants measured together, created once (after
    the first variant's memory estimate passed) with a pristine copy: a plugin that modifies its
    inputs in place is an error, and the others get the inputs back as they were."""

    def __init__(self, spec: SweepSpec, n: int):
        self.spec, self.n, self.tensors, self._pristine = spec, n, None, None
        self.matmul_gflops: float | None = None  # the group's reference rate: sizes the error references

    def get(self):
        if self.tensors is None:
            grad = self.spec.mode == "fwdbwd" and self.spec.level == "attention"
            self.tensors = _inputs(self.spec, self.n, requires_grad=grad)
            self._pristine = [t.detach().clone() for t in self.tensors]
        return self.tensors

    def reference(self, key, compute):
        """A reference output on these inputs (`full`'s, a dense pattern's), computed once and
        shared by the variants of the length."""
        from ..reference import ReferenceTimeout

        if not hasattr(self, "_references"):
            self._references = {}
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


def prepare_point(spec: SweepSpec, variant: Variant, n: int, inputs: InputSet, tick=None) -> Prepared:
    """Everything of a point but its timing: the memory estimate against the budget before any
    allocation, the first call of a freshly built module (validated, timed, memory-profiled),
    a steady-state memory profile, the FLOP count, the error columns and one warm call to size
    the timed blocks. Never raises for the point's own failure. `tick(label)`, if given, is
    called as each call of the attention starts (the measuring process's heartbeat)."""
    row = {**base_row(spec, variant, n), "status": "ok", "reason": None}
    watch = None
    beat = (lambda: tick(variant.label)) if tick is not None else (lambda: None)
    try:
        beat()
        torch.manual_seed(spec.seed)
        module = _build(spec, variant)
        cores = _cores(module, spec.level)
        core = cores[0]
        if spec.causal and not getattr(core, "supports_causal", False):
            raise UnsupportedError(f"{variant.label} does not support causal attention")
        declared = Facts.of(core).dtypes
        if isinstance(declared, tuple) and spec.dtype not in declared:
            raise UnsupportedError(f"{variant.label} declares dtypes {', '.join(declared)}, not {spec.dtype}")
        # 1. the budget, before the inputs are allocated
        too_big = over_budget(spec, core, n, inputs, row)
        if too_big:
            return Prepared(variant, {**row, "status": "oom", "reason": too_big})
        budget = spec.memory_budget_bytes
        fwdbwd = spec.mode == "fwdbwd"
        tensors = inputs.get()
        row["input_bytes"] = measure.storage_bytes(tensors)

        def step_of(module):
            module.train() if fwdbwd else module.eval()

            def call():
                if spec.level == "attention":
                    return module(*tensors, causal=spec.causal)
                return module(*tensors)

            def step():
                beat()
                if fwdbwd:
                    out = call()
                    out.float().square().mean().backward()
                    for t in tensors:
                        t.grad = None
                    return out
                with torch.no_grad():
                    return call()

            return step

        step = step_of(module)

        def clean_step():
            out = step()
            module.zero_grad(set_to_none=True)
            return out

        # 2. the first call of the fresh module: validated, timed, and its memory measured (what
        #    it creates and keeps - plans, workspaces, caches - counts)
        t0 = time.perf_counter()
        with CoreWatch(*cores) as watch:
            out, first_peak, net, seen = measure.profile_memory(step, spec.device, with_events=True)
            if fwdbwd:
                watch.check_backward()
        first_ms = (time.perf_counter() - t0) * 1e3
        if watch.problem:
            return Prepared(variant, {**row, "status": "error", "reason": watch.problem})
        if not watch.calls:
            return Prepared(
                variant, {**row, "status": "error", "reason": f"the attention core of {variant.label} was never called"}
            )
        retained = max(0, net - measure.storage_bytes(_alive(module, [out])))
        module.zero_grad(set_to_none=True)
        for _ in range(2):  # the profiler lost the first call's events: a fresh module's first call again
            if seen or not out.numel():
                break
            torch.manual_seed(spec.seed)
            again = _build(spec, variant)
            out, first_peak, net, seen = measure.profile_memory(step_of(again), spec.device, with_events=True)
            retained = max(0, net - measure.storage_bytes(_alive(again, [out])))
            del again
        # events still lost: the memory is unknown, never 0 (None, and the row says why)
        lost = not seen and bool(out.numel())
        del out
        if not inputs.intact():
            return Prepared(
                variant, {**row, "status": "error", "reason": f"{variant.label} modified its inputs in place"}
            )
        row["first_call_ms"] = first_ms
        if first_ms / 1e3 > spec.timeout_s:
            return Prepared(
                variant,
                {
                    **row,
                    "status": "timeout",
                    "reason": f"one call took {first_ms / 1e3:.1f} s > timeout {spec.timeout_s:g} s",
                },
            )
        row["backend"] = getattr(core, "last_backend", None)
        # 3. the steady-state peak of two more calls; what they too create and keep counts (a cache
        #    built on the second or third call is no less kept than one built on the first)
        steady_peak, per_call, outs = 0, float("inf"), []
        for _ in range(2):
            for _try in range(3):  # a profile that lost its events is taken again
                t0 = time.perf_counter()
                out, peak, net, seen = measure.profile_memory(clean_step, spec.device, with_events=True)
                per_call = min(per_call, time.perf_counter() - t0)  # sizes the rounds' blocks (an upper bound)
                if seen or not out.numel() or _try == 2:
                    break
                out = None  # free it before the next try
            lost |= not seen and bool(out.numel())
            steady_peak = max(steady_peak, peak)
            retained += max(0, net - measure.storage_bytes([out]))
            if not fwdbwd and spec.level == "attention":
                outs.append(out.detach())  # the two outputs of one input: the error and determinism checks
            del out
        if lost:
            row["memory_unmeasured"] = "the profiler recorded no allocator event for a call, three times"
            first_peak = retained = None
        row["first_call_peak_mem_bytes"] = first_peak
        row["retained_bytes"] = retained
        row["peak_mem_bytes"] = None if lost else max(first_peak, retained + steady_peak)
        if budget and not lost and row["input_bytes"] + row["peak_mem_bytes"] > budget:
            return Prepared(
                variant,
                {
                    **row,
                    "status": "oom",
                    "reason": (
                        f"inputs {row['input_bytes']} + peak {row['peak_mem_bytes']} bytes exceed the memory "
                        f"budget {budget}"
                    ),
                },
            )
        # 4. useful FLOPs from the exact count of attended pairs
        beat()
        pairs = measure.attended_pairs(core, n, n, spec.causal)
        if pairs is not None and not 0 <= pairs <= n * n:
            return Prepared(
                variant,
                {
                    **row,
                    "status": "error",
                    "reason": f"the plugin counts {pairs} attended pairs, outside 0..n^2 = {n * n}",
                },
            )
        row["attended_pairs"] = pairs
        row["flops"] = (
            None if pairs is None else 4 * spec.batch * spec.heads * spec.head_dim * pairs * (3.5 if fwdbwd else 1.0)
        )
        row["exact"] = bool(getattr(core, "exact", False))
        row["flops_basis"] = "pairs" if row["flops"] is not None else None
        if not row["exact"]:
            algo = measure.algorithm_flops(core, spec, n)
            if algo is not None:  # the work an approximate algorithm does, backward as 2 forwards
                row["flops"], row["flops_basis"] = algo * (3.0 if fwdbwd else 1.0), "algorithm"
        deadline = time.monotonic() + spec.timeout_s  # the references' budget: the error columns', then the check's
        if spec.error and spec.level == "attention":
            beat()
            errs, problem = _errors(spec, core, tensors, n, inputs, outs[-1] if outs else None, deadline, beat)
            if problem:
                return Prepared(variant, {**row, "status": "error", "reason": problem})
            row.update(errs)
        # 5. an exact plugin computes its declared pattern, or the point is an error
        beat()
        qkv = tuple(t.detach() for t in tensors) if spec.level == "attention" else exactness.synthetic_inputs(spec, n)
        cols, problem = exactness.check(
            spec,
            core,
            n,
            qkv,
            outs if len(outs) == 2 else None,
            inputs.reference if spec.level == "attention" else _no_cache,
            beat,
            time.monotonic() + spec.timeout_s,
        )
        row.update(cols)
        del outs
        if problem:
            return Prepared(variant, {**row, "status": "error", "reason": problem})
        if not inputs.intact():
            return Prepared(
                variant, {**row, "status": "error", "reason": f"{variant.label} modified its inputs in place"}
            )
        return Prepared(variant, row, clean_step, per_call, cores)
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure is a recorded status
        record_failure(row, watch, e)
    return Prepared(variant, row)


def record_failure(row: dict, watch, e: BaseException) -> None:
    """A point's own failure as its status and reason: oom (evidence of memory exhaustion only),
    unsupported, or error with the traceback. The user's Ctrl-C (outside a measuring process)
    is raised again."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        row.update(status="oom", reason=str(e).splitlines()[0])
    elif isinstance(e, MemoryError):
        row.update(status="oom", reason=f"MemoryError: {e}")
    elif isinstance(e, RuntimeError) and not isinstance(e, (UnsupportedError, EffattnError)):
        msg = str(e)
        first = msg.splitlines()[0] if msg else ""
        if "DefaultCPUAllocator: can't allocate memory" in msg or first.startswith("CUDA out of memory"):
            row.update(status="oom", reason=first)
        else:
            _failed(row, watch, f"RuntimeError: {first}")
    elif isinstance(e, (UnsupportedError, EffattnError)):
        row.update(status="unsupported", reason=str(e))
    elif isinstance(e, KeyboardInterrupt):
        if not IN_MEASURING_PROCESS:
            raise e  # the user's Ctrl-C, measuring in their own process
        _failed(row, watch, f"the plugin raised KeyboardInterrupt: {e}")
    else:
        _failed(row, watch, f"{type(e).__name__}: {e}")


def _failed(row, watch, reason):
    """An exception: when the watch saw a bad output first, that is the real reason."""
    problem = watch.problem if watch is not None else None
    row.update(status="error", reason=problem or reason, traceback=traceback.format_exc(limit=6)[-MAX_TRACEBACK:])


def _no_cache(key, compute):
    return compute()


def _errors(spec, core, tensors, n, inputs: InputSet, out, deadline, beat) -> tuple[dict, str | None]:
    """Error of this variant against exact softmax (`full`, in the sweep's dtype). `out` is the
    output of a forward call already made on these inputs (fwd mode); otherwise one more call,
    without gradients, makes it. The reference is computed once per length and shared by the
    variants (`InputSet.reference`); one that cannot be computed within the --timeout leaves the
    columns empty, says why in `error_note`, and changes nothing else. Returns the columns, or
    the reason the output is invalid."""
    from ..reference import ReferenceTimeout, full_reference

    q, k, v = (t.detach() for t in tensors)
    res = {"rel_err_vs_full": None, "cosine_vs_full": None}
    with torch.no_grad():
        if out is None:
            beat()
            out = core(q, k, v, causal=spec.causal)
        problem = check_output(out, q, v, "output (error check)")
        if problem:
            return {}, problem
        one_call = _predicted_full_s(spec, n, inputs.matmul_gflops) <= spec.timeout_s / 4
        try:
            ref = inputs.reference(
                ("full", spec.causal),
                lambda: full_reference(q, k, v, spec.causal, deadline=deadline, tick=beat, one_call=one_call),
            )
        except ReferenceTimeout as e:
            return {**res, "error_note": f"not computed: {e}"}, None
        rel, cos = measure.output_errors(out, ref)
        res.update(rel_err_vs_full=rel, cosine_vs_full=cos)
    bad = [k for k, x in res.items() if isinstance(x, float) and not math.isfinite(x)]
    if bad:
        return {}, f"{', '.join(bad)} not finite: the output or the reference is not comparable"
    return res, None


def _predicted_full_s(spec, n: int, gflops: float | None) -> float:
    """Seconds exact attention at length n should take at half the measured matmul rate (SDPA
    reaches 80-87% of it); infinite when no rate is known."""
    if not gflops:
        return math.inf
    flops = 4 * spec.batch * spec.heads * spec.head_dim * n * n * (0.5 if spec.causal else 1.0)
    return flops / (0.5 * gflops * 1e9)
