"""Interleaved measurement: the variants of one length timed in short alternating rounds.

A sweep's conclusions are ratios (how much faster than `full`, from which length), and a load
that comes and goes while all of A's repeats are taken, then all of B's, lands on some variants
and not on others. Here every variant of a length is prepared first (`prepare_point`: validated
first call, memory, FLOPs, errors), then timed in rounds: in each round every variant runs one
short block of calls, in an order shuffled per round, so a slow change in load lands on every
variant alike. Each round is bracketed by a reference kernel (a matmul) timed at its start and
end: the reference is the matmul peak that `peak_fraction` divides by, measured under the same
conditions as the points, and it is the load probe - a round whose reference ran slower than the
quiet rate (`quiet_rate`: the third-highest of this process's readings) by more than LOAD_TOLERANCE
is a loaded round, its samples are set aside and more rounds are run, within a time budget. A group
that still has fewer than MIN_ROUNDS clean rounds uses its MIN_ROUNDS least loaded rounds and flags
its points `loaded`.
"""

from __future__ import annotations

import os
import random
import time

import torch

from ..guard import TorchState as _TorchState
from ..spec import Variant
from ..stats import median_ci
from . import load, measure
from .point import MAX_REASON, MAX_TRACEBACK, InputSet, Prepared, SweepSpec, base_row, prepare_point

#: rounds a length takes when its calls are short; a length of slow points (whose rounds would
#: outlast the points' --min-run-time) takes fewer, never fewer than MIN_ROUNDS: 6 is the fewest
#: samples whose median has a 95% interval (with 5, [min, max] covers it 94%, with 3 only 75%)
ROUNDS, MIN_ROUNDS = 10, 6
#: a round whose reference kernel ran this much slower than the quiet rate is a loaded round
LOAD_TOLERANCE = 0.20
#: seconds a group may spend on extra rounds while the machine is busy, before it gives up and
#: flags its points `loaded` (a load that works 10 s and idles 10 s leaves a quiet stretch in most
#: such windows)
LOAD_WAIT_S = 10.0
#: the reference kernel: a square matmul of this size (2 n^3 FLOPs), in the sweep's dtype, so that
#: a bf16 point's fraction of the peak is a fraction of what bf16 matmuls reach
PROBE_N = {"cpu": 1024, "cuda": 8192}
#: a half-precision matmul below this fraction of float32's is a degenerate path (see Reference)
DEGENERATE_FRACTION = 0.25

#: the reference readings this process has taken, newest last (a measuring process serves many
#: groups); the quiet rate is judged from the last HISTORY of them
_PROBE_HISTORY: dict = {}
HISTORY = 200
#: the quiet rate is the BAR_RANK-th highest reading, not the highest: one or two readings taken
#: in a burst of turbo clock must not make every later round look loaded. (Not a quantile: under a
#: load that stays, a quantile sinks to the loaded rate and the load is no longer seen.)
BAR_RANK = 3


def quiet_rate(readings) -> float:
    """The rate a round is judged against: the BAR_RANK-th highest reference reading (the
    highest while there are fewer)."""
    x = sorted(r for r in readings if r and r > 0)
    return x[-min(len(x), BAR_RANK)] if x else 0.0


def schedule(labels: list[str], rounds: int, seed: int) -> list[list[str]]:
    """The order of each round: every label in every round (so that any two points of a length
    can be compared round by round), shuffled per round by a seeded generator."""
    rng = random.Random(seed)
    plan = []
    for _ in range(rounds):
        order = list(labels)
        rng.shuffle(order)
        plan.append(order)
    return plan


def rounds_for(per_call_s: dict[str, float], min_run_time_s: float) -> tuple[int, dict[str, int]]:
    """How many rounds a length gets, and each point's calls per block. A block is a tenth of
    --min-run-time (at least one call); a length whose rounds take longer than the points' total
    budget (slow points) gets fewer rounds, never fewer than MIN_ROUNDS."""
    block_s = min_run_time_s / ROUNDS
    calls = {label: max(1, round(block_s / max(t, 1e-7))) for label, t in per_call_s.items()}
    per_round = sum(calls[label] * t for label, t in per_call_s.items())
    budget = len(per_call_s) * min_run_time_s
    rounds = ROUNDS if per_round <= 0 else max(MIN_ROUNDS, min(ROUNDS, round(budget / per_round)))
    return rounds, calls


class Reference:
    """The reference kernel: a preallocated matmul, timed between rounds. In the sweep's dtype,
    unless that dtype's matmul is a degenerate path on this device (a CPU without fast float16 or
    bfloat16 arithmetic runs it at a fraction of a GFLOP/s, while SDPA converts to float32
    internally): then float32's, and `note` says so."""

    def __init__(self, device: str, dtype=torch.float32):
        n = PROBE_N.get(device, 1024)
        self.device, self.flops, self.n = device, 2 * n**3, n
        self.dtype, self.note = dtype, None
        self._make(dtype)
        if device == "cpu" and dtype in (torch.float16, torch.bfloat16):
            own = self._rate()
            self._make(torch.float32)
            f32 = self._rate()
            if own < DEGENERATE_FRACTION * f32:
                self.dtype = torch.float32
                name = str(dtype).replace("torch.", "")
                self.note = (
                    f"{name} matmuls run at {own:.1f} GFLOP/s on this CPU ({own / f32:.0%} of float32's {f32:.0f}: "
                    f"no fast {name} path); the peak is float32's"
                )
            else:
                self._make(dtype)

    def _make(self, dtype) -> None:
        n, device = self.n, self.device
        self.a, self.b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        self.c = torch.empty(n, n, device=device, dtype=dtype)
        self.block = _Block(lambda: torch.mm(self.a, self.b, out=self.c), device)
        self.block(1)  # warm
        self.first_gflops = self._rate()  # a first reading, before the rounds: sizes the error references

    def _rate(self) -> float:
        return self.flops / self.block(1) / 1e9

    def gflops(self) -> float:
        """One reading of the reference rate (the probe of the rounds)."""
        return self._rate()


class _Block:
    """Seconds per call of `fn`, over a block of k calls, CUDA synchronised at both ends.

    (torch.utils.benchmark's Timer.timeit runs at least two warm-up calls every time it is
    called: for a block of one or two slow calls that triples the cost of every round. The calls
    here are warm already - each point's first calls were made while it was prepared.)"""

    def __init__(self, fn, device: str):
        self.fn, self.sync = fn, device == "cuda"

    def __call__(self, k: int) -> float:
        fn = self.fn
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        if self.sync:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / k


def measure_group(
    spec: SweepSpec, variants: list[Variant], n: int, tick=None, baseline_gflops: float | None = None
) -> list[dict]:
    """Measure every variant of one length, interleaved; one row per variant, in their order.
    `baseline_gflops`: the quiet reference rate the caller has seen in this run (the median of
    its groups' quiet rates); load detection judges against the higher of it and this process's
    own `quiet_rate`."""
    from ..env import environment
    from ..errors import EffattnError

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EffattnError(f"sequence length must be an integer > 0, got {n!r}")
    if spec.device == "cuda":
        torch.cuda.empty_cache()  # what earlier lengths left in the allocator's cache is free again
    env = environment()
    try:
        # first: its memory is taken before any point's budget is checked, and a device that
        # cannot run it fails here, for every point alike
        ref = Reference(spec.device, getattr(torch, spec.dtype))
    except Exception as e:  # noqa: BLE001 - a reference that cannot run is every point's recorded failure
        status = "oom" if _is_oom(e) else "error"
        return [
            {
                **base_row(spec, v, n),
                "status": status,
                "env": env,
                "matmul_peak_gflops": None,
                "reason": f"cannot run the reference matmul on {spec.device}: {type(e).__name__}: {e}",
            }
            for v in variants
        ]
    inputs = InputSet(spec, n)
    inputs.matmul_gflops = ref.first_gflops
    guard = _TorchState()
    prepared = []
    if spec.mode == "decode":
        from .decode import prepare_decode as prepare
    else:
        prepare = prepare_point
    for v in variants:
        p = prepare(spec, v, n, inputs, tick)
        changed = guard.restore()  # a plugin that changed torch's global state: an error, undone
        if changed:
            p = Prepared(v, {**p.row, "status": "error", "reason": f"{v.label} {changed}"})
        prepared.append(p)
    ready = [p for p in prepared if p.ready]
    if tick is not None:
        tick("")  # the group's own work, no variant's
    inputs.drop_references()  # the error columns are done: their references are not timed
    if ready:
        timing = _rounds(spec, ready, ref, n, tick, baseline_gflops)
        _last_call(ready, timing, guard, tick, spec.memory_budget_bytes)
    else:  # no point to time: the reference alone, so that every row says what the machine could do
        rates = sorted(ref.gflops() for _ in range(3))
        timing = {"points": {}, "group": {"matmul_peak_gflops": rates[1], "probe_gflops_raw": rates}}
    timing["group"]["peak_note"] = ref.note
    if spec.mode == "decode":  # the roofline of a step that reads its cache: this machine's bandwidth now
        try:
            timing["group"]["membw_peak_gbs"] = measure.memory_bandwidth_gbs(spec.device)
        except Exception:  # noqa: BLE001 - no bandwidth figure is better than a failed group
            timing["group"]["membw_peak_gbs"] = None
    rows = []
    for p in prepared:
        row = dict(p.row, env=env)
        if p.ready:
            row.update(timing["points"][p.variant.label])
        row.update(timing["group"])
        _rate(row, spec)
        for key, most in (("reason", MAX_REASON), ("traceback", MAX_TRACEBACK)):
            if isinstance(row.get(key), str) and len(row[key]) > most:
                row[key] = row[key][:most] + f"... ({len(row[key]) - most} more characters)"
        rows.append(row)
    return rows


def _is_oom(e: BaseException) -> bool:
    """Evidence of memory exhaustion (never a message that merely mentions memory)."""
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and (
        "DefaultCPUAllocator: can't allocate memory" in msg or msg.startswith("CUDA out of memory")
    )


def _last_call(ready, timing, guard, tick, budget: int | None) -> None:
    """One more call of every timed point, watched like the first: a plugin whose output turns
    bad after a few calls (or in a later layer than the first) is caught, and the point is an
    error instead of `ok`. The process's resident memory is watched over it: what a plugin takes
    outside torch's allocator at every call (NumPy, a library's own buffers) shows there, after
    the rounds have settled the heap (over the first calls, the allocator's growth and the loading
    of code would count too), and a point above the budget with it is `oom`."""
    from .validate import CoreWatch

    for p in ready:
        label = p.variant.label
        point = timing["points"][label]
        if point.get("status") == "error":
            continue
        problem = None
        try:
            if tick is not None:
                tick(label)
            with CoreWatch(*p.cores) as watch:
                point["rss_peak_bytes"] = _resident_peak(p)
            problem = watch.problem
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin's failure is a recorded status
            problem = f"{type(e).__name__}: {e}"
        changed = guard.restore()
        if problem or changed:
            point.update(status="error", reason=f"after {point.get('rounds', 0)} timed rounds: {problem or changed}")
            continue
        rss, inputs = point.get("rss_peak_bytes"), p.row.get("input_bytes") or 0
        if budget and rss is not None and rss > (p.row.get("peak_mem_bytes") or 0) and inputs + rss > budget:
            point.update(
                status="oom",
                reason=f"inputs {inputs} + resident peak (memory outside torch's allocator) {rss} bytes exceed the "
                f"memory budget {budget}",
            )


def _resident_peak(p: Prepared) -> int | None:
    """The resident memory one call of the point takes above what was resident before it. Where
    it exceeds the peak torch measured, the call is made once more and the lower reading kept: the
    allocator's heap now and then grows again by memory torch had freed (glibc serves a freed large
    block from a raised mmap threshold, then trims it), which is noise; what a plugin takes outside
    torch at every call shows in both readings."""
    readings = []
    for _ in range(2):
        resident = measure.ResidentPeak()
        p.step()
        readings.append(resident.peak())
        if readings[-1] is None or readings[-1] <= (p.row.get("peak_mem_bytes") or 0):
            break
    return None if readings[-1] is None else min(readings)


def _rounds(spec: SweepSpec, ready, ref: Reference, n: int, tick, baseline_gflops) -> dict:
    from ..env import environment

    block_s = spec.min_run_time_s / ROUNDS
    timers, per_call = {}, {}
    for p in ready:
        label = p.variant.label
        timers[label] = _Block(p.step, spec.device)
        t = p.per_call_s
        if t < block_s:  # one call is a poor clock for short calls: time a block's worth to size the blocks
            t = timers[label](max(1, min(1000, round(block_s / max(t, 1e-7)))))
        per_call[label] = max(t, 1e-7)
    planned, calls = rounds_for(per_call, spec.min_run_time_s)
    key = (spec.device, spec.dtype)
    history = _PROBE_HISTORY.setdefault(key, [])
    readings: list[float] = []  # this group's reference readings, one per bracket

    def bar() -> float:
        return max(quiet_rate(history[-HISTORY:] + readings), baseline_gflops or 0.0)

    samples = {label: [] for label in per_call}  # (per-call seconds, round index)
    failed: dict[str, str] = {}
    probes, brackets, loadavg = [], [], []
    seed = hash((spec.seed, n)) & 0xFFFFFFFF
    labels = list(per_call)

    def quiet_rounds() -> int:
        # judged against the quiet rate seen by now: a load present from the group's start shows
        # once a few quiet readings have raised the bar, and more rounds are run
        best = bar()
        return sum(rate >= (1 - LOAD_TOLERANCE) * best for rate in probes)

    r, started, extra_deadline, after = 0, time.monotonic(), None, None
    meter = load.CpuMeter().start()
    while True:
        if r >= planned:  # extra rounds while too few were quiet, as long as the budget lasts
            if extra_deadline is None:
                # at least LOAD_WAIT_S, and twice the planned rounds' own time: a length whose
                # rounds take seconds needs that long to meet a quiet stretch
                extra_deadline = time.monotonic() + max(LOAD_WAIT_S, 2 * (time.monotonic() - started))
            if quiet_rounds() >= planned or time.monotonic() > extra_deadline:
                break
        order = [lb for lb in schedule(labels, 1, seed + r)[0] if lb not in failed]
        if not order:
            break
        if tick is not None:
            tick("")
        # one reference between consecutive rounds: the end of round r is the start of round r + 1
        if r == 0:
            before = ref.gflops()
            readings.append(before)
        else:
            before = after
        for label in order:
            if tick is not None:
                tick(label)
            try:
                samples[label].append((timers[label](calls[label]), r))
            except (Exception, SystemExit) as e:  # noqa: BLE001 - a call that fails in the rounds ends the point
                failed[label] = ("oom" if _is_oom(e) else "error", f"a timed call raised {type(e).__name__}: {e}")
        if tick is not None:
            tick("")
        after = ref.gflops()
        readings.append(after)
        probes.append(min(before, after))  # both brackets must be quiet for the round to be
        brackets.append((before + after) / 2)
        try:
            loadavg.append(os.getloadavg()[0])
        except OSError:
            pass
        r += 1
    best = bar()
    machine = meter.stop()
    history.extend(readings)
    del history[:-HISTORY]
    # Judge every round again against the quiet rate of the whole group. With too few quiet
    # rounds, the least loaded ones (the highest reference rates) are used, and the points say so.
    loaded_rounds = {i for i, rate in enumerate(probes) if rate < (1 - LOAD_TOLERANCE) * best}
    used = [i for i in range(len(probes)) if i not in loaded_rounds]
    group_loaded = len(used) < MIN_ROUNDS
    if group_loaded:
        used = sorted(range(len(probes)), key=lambda i: -probes[i])[:MIN_ROUNDS]
    used = set(used)
    quiet = sorted(brackets[i] for i in used) or brackets
    peak = quiet[len(quiet) // 2]
    # what the machine says: others' CPU time, the load average, this machine's usual rate
    env = environment()
    threads = env.get("threads") or torch.get_num_threads()
    known = load.History()
    key = load.machine_key(env, spec.device, str(ref.dtype).replace("torch.", ""), ref.n)
    usual = known.usual(key)
    reasons = ([] if not group_loaded else ["fewer than 6 rounds were quiet"]) + load.verdict(
        machine, threads, min(loadavg) if loadavg else None, peak, usual, LOAD_TOLERANCE
    )
    if not reasons:
        known.record(key, peak)
    machine_loaded = len(reasons) > (1 if group_loaded else 0)
    points = {}
    for label, got in samples.items():
        if label in failed or not got:
            status, reason = failed.get(label, ("error", "no timed round"))
            points[label] = {"status": status, "reason": reason}
            continue
        use = [(t, i) for t, i in got if i in used] or got
        points[label] = _stats(use, len(got) - len(use), group_loaded or machine_loaded)
    import uuid

    group = {
        "group_id": uuid.uuid4().hex[:12],
        "matmul_peak_gflops": peak,
        "probe_gflops_raw": probes,
        "rounds_total": len(probes),
        "loaded_rounds_total": len(loaded_rounds),
        "probe_best_gflops": best,
        "loadavg_1m": (max(loadavg) if loadavg else None),
        "others_cpu_cores": machine["others_cpu_cores"],
        "own_cpu_cores": machine["own_cpu_cores"],
        "machine_usual_gflops": usual,
        "load_reasons": reasons or None,
        "rounds_s": time.monotonic() - started,
    }
    return {"points": points, "group": group}


def _stats(samples: list[tuple[float, int]], set_aside: int, loaded: bool) -> dict:
    """A point's statistics from its (seconds per call, round index) samples. The samples are kept
    in round order with their round ids (`time_raw_ms`, `time_round_ids`), so that two points of
    one length can be compared round by round (`effattn.results.paired_ratio`)."""
    in_order = sorted(samples, key=lambda s: s[1])
    ms = sorted(t * 1e3 for t, _ in in_order)
    m = len(ms)
    med = ms[m // 2] if m % 2 else (ms[m // 2 - 1] + ms[m // 2]) / 2
    q1, q3 = ms[max(0, (m - 1) // 4)], ms[min(m - 1, (3 * (m - 1) + 3) // 4)]
    lo, hi, cov = median_ci(ms)
    return {
        "time_ms": med,
        "time_iqr_ms": q3 - q1,
        "time_raw_ms": [t * 1e3 for t, _ in in_order],
        "time_round_ids": [i for _, i in in_order],
        "time_ci_ms": [lo, hi],
        "time_ci_coverage": cov,
        "rounds": m,
        "loaded_rounds": set_aside,
        "loaded": loaded,
        "noisy": bool(med > 0 and (q3 - q1) / med > measure.NOISY_IQR_RATIO),
    }


def _rate(row: dict, spec: SweepSpec) -> None:
    """Useful GFLOP/s and its fraction of the reference measured in the same rounds; a fraction
    above 1 is a measurement fault, flagged."""
    if row.get("status") != "ok" or not row.get("time_ms"):
        row["gflops"] = None
        return
    if spec.mode == "decode":
        _decode_rate(row, spec)
        return
    counted = (row.get("exact") or row.get("flops_basis") == "algorithm") and spec.level == "attention"
    counted = counted and row.get("flops")
    row["gflops"] = row["flops"] / (row["time_ms"] / 1e3) / 1e9 if counted else None
    peak = row.get("matmul_peak_gflops")
    if row["gflops"] and peak:
        row["peak_fraction"] = row["gflops"] / peak
        if row["peak_fraction"] > 1.0:
            row["fault"] = (
                f"useful FLOP rate {row['gflops']:.1f} GFLOP/s is {row['peak_fraction']:.0%} of the "
                f"matmul peak {peak:.1f} measured in the same rounds: the time, the FLOP count or the "
                "peak is wrong"
            )


def _decode_rate(row: dict, spec: SweepSpec) -> None:
    """A decoding step: tokens per second, its FLOP rate and fraction of the matmul peak (where it
    states its FLOPs), and the bandwidth it achieves reading what it reads against the machine's
    bandwidth measured in the same group (a step is memory-bound: reading its cache is its cost)."""
    s = row["time_ms"] / 1e3
    row["tokens_per_s"] = spec.batch / s
    flops, read = row.get("step_flops"), row.get("step_read_bytes")
    row["gflops"] = flops / s / 1e9 if flops else None
    peak = row.get("matmul_peak_gflops")
    if row["gflops"] and peak:
        row["peak_fraction"] = row["gflops"] / peak
    row["bandwidth_gbs"] = read / s / 1e9 if read else None
    bw = row.get("membw_peak_gbs")
    if row["bandwidth_gbs"] and bw:
        row["bandwidth_fraction"] = row["bandwidth_gbs"] / bw


def measure_point(spec: SweepSpec, variant: Variant, n: int, tick=None) -> dict:
    """Measure one point in this process (a group of one)."""
    return measure_group(spec, [variant], n, tick=tick)[0]
