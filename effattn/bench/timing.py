"""Timing: named callables measured in short interleaved rounds, bracketed by a reference kernel.
The one timing engine of effattn: a sweep's points use it (`effattn.bench.group`), and so do the
benchmark scripts, through `time_interleaved`.

    rounds = time_interleaved({"ours": lambda: ours(q, k, v), "theirs": lambda: theirs(q, k, v)})
    rounds.timings["ours"].time_ms, rounds.group.matmul_peak_gflops

A conclusion is a ratio (how much faster, from which length), and a load that comes and goes
while all of A's repeats are taken, then all of B's, lands on some callables and not on others.
So in each round every callable runs one short block of calls, in an order shuffled per round,
and a slow change in load lands on all alike. Each round is bracketed by a reference kernel (a
matmul) timed at its start and end: it is the peak that fractions of the peak divide by,
measured under the same conditions, and it is the load probe - a round whose reference ran
slower than the quiet rate (`quiet_rate`: the third-highest of this process's readings) by more
than LOAD_TOLERANCE is a loaded round, its samples are set aside and more rounds are run, within
a time budget. A group that still has fewer than MIN_ROUNDS clean rounds uses its MIN_ROUNDS
least loaded rounds and is flagged `loaded`; so is one that the machine itself says was busy
(`effattn.bench.load`).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..stats import median_ci
from . import load

#: rounds a group takes when its calls are short; a group of slow callables (whose rounds would
#: outlast its min_run_time) takes fewer, never fewer than MIN_ROUNDS: 6 is the fewest samples
#: whose median has a 95% interval (with 5, [min, max] covers it 94%, with 3 only 75%)
ROUNDS, MIN_ROUNDS = 10, 6
#: a round whose reference kernel ran this much slower than the quiet rate is a loaded round
LOAD_TOLERANCE = 0.20
#: seconds a group may spend on extra rounds while the machine is busy, before it gives up and
#: flags itself `loaded` (a load that works 10 s and idles 10 s leaves a quiet stretch in most
#: such windows)
LOAD_WAIT_S = 10.0
#: the reference kernel: a square matmul of this size (2 n^3 FLOPs), in the measured dtype, so
#: that a bf16 point's fraction of the peak is a fraction of what bf16 matmuls reach
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
#: IQR / median above this flags a callable's timing as noisy
NOISY_IQR_RATIO = 0.10


def quiet_rate(readings) -> float:
    """The rate a round is judged against: the BAR_RANK-th highest reference reading (the
    highest while there are fewer)."""
    x = sorted(r for r in readings if r and r > 0)
    return x[-min(len(x), BAR_RANK)] if x else 0.0


def schedule(labels: list[str], rounds: int, seed: int) -> list[list[str]]:
    """The order of each round: every label in every round (so that any two callables can be
    compared round by round), shuffled per round by a seeded generator."""
    rng = random.Random(seed)
    plan = []
    for _ in range(rounds):
        order = list(labels)
        rng.shuffle(order)
        plan.append(order)
    return plan


def rounds_for(per_call_s: dict[str, float], min_run_time_s: float) -> tuple[int, dict[str, int]]:
    """How many rounds a group gets, and each callable's calls per block. A block is a tenth of
    min_run_time (at least one call); a group whose rounds take longer than its callables' total
    budget (slow calls) gets fewer rounds, never fewer than MIN_ROUNDS."""
    block_s = min_run_time_s / ROUNDS
    calls = {label: max(1, round(block_s / max(t, 1e-7))) for label, t in per_call_s.items()}
    per_round = sum(calls[label] * t for label, t in per_call_s.items())
    budget = len(per_call_s) * min_run_time_s
    rounds = ROUNDS if per_round <= 0 else max(MIN_ROUNDS, min(ROUNDS, round(budget / per_round)))
    return rounds, calls


class Block:
    """Seconds per call of `fn`, over a block of k calls, CUDA synchronised at both ends.

    (torch.utils.benchmark's Timer.timeit runs at least two warm-up calls every time it is
    called: for a block of one or two slow calls that triples the cost of every round. The calls
    here are warm already.)"""

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


class Reference:
    """The reference kernel: a preallocated matmul, timed between rounds. In the measured dtype,
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
        self.block = Block(lambda: torch.mm(self.a, self.b, out=self.c), device)
        self.block(1)  # warm
        self.first_gflops = self._rate()  # a first reading, before the rounds

    def _rate(self) -> float:
        return self.flops / self.block(1) / 1e9

    def gflops(self) -> float:
        """One reading of the reference rate (the probe of the rounds)."""
        return self._rate()


def is_oom(e: BaseException) -> bool:
    """Evidence of memory exhaustion (never a message that merely mentions memory)."""
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and (
        "DefaultCPUAllocator: can't allocate memory" in msg or msg.startswith("CUDA out of memory")
    )


@dataclass(frozen=True)
class Timing:
    """One callable's rounds: its per-call time in each round used (in round order, with the
    round ids, so that two callables of one group can be compared round by round), how many
    rounds were set aside as loaded, and whether the group was measured on a busy machine."""

    samples_ms: tuple[float, ...]
    round_ids: tuple[int, ...]
    set_aside: int = 0
    loaded: bool = False

    @property
    def time_ms(self) -> float:
        ms, m = sorted(self.samples_ms), len(self.samples_ms)
        return ms[m // 2] if m % 2 else (ms[m // 2 - 1] + ms[m // 2]) / 2

    def columns(self) -> dict:
        ms = sorted(self.samples_ms)
        m = len(ms)
        med = self.time_ms
        q1, q3 = ms[max(0, (m - 1) // 4)], ms[min(m - 1, (3 * (m - 1) + 3) // 4)]
        lo, hi, cov = median_ci(ms)
        return {
            "time_ms": med,
            "time_iqr_ms": q3 - q1,
            "time_raw_ms": list(self.samples_ms),
            "time_round_ids": list(self.round_ids),
            "time_ci_ms": [lo, hi],
            "time_ci_coverage": cov,
            "rounds": m,
            "loaded_rounds": self.set_aside,
            "loaded": self.loaded,
            "noisy": bool(med > 0 and (q3 - q1) / med > NOISY_IQR_RATIO),
        }


@dataclass(frozen=True)
class GroupTiming:
    """What every callable of one group shares: the reference's rates, the rounds, the load."""

    group_id: str
    matmul_peak_gflops: float
    probe_gflops_raw: tuple[float, ...]
    rounds_total: int
    loaded_rounds_total: int
    probe_best_gflops: float | None
    loadavg_1m: float | None
    others_cpu_cores: float | None
    own_cpu_cores: float | None
    machine_usual_gflops: float | None
    load_reasons: tuple[str, ...] | None
    rounds_s: float | None
    peak_note: str | None = None
    membw_peak_gbs: float | None = None  # decoding: the machine's read bandwidth, measured beside

    def columns(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["probe_gflops_raw"] = list(self.probe_gflops_raw)
        out["load_reasons"] = list(self.load_reasons) if self.load_reasons else None
        if self.membw_peak_gbs is None and "membw_peak_gbs" in out:
            del out["membw_peak_gbs"]
        return out


@dataclass
class Rounds:
    """What `time_interleaved` measured: a Timing per callable that finished its rounds, the
    status and reason of each that failed in them, and the group's shared figures."""

    timings: dict[str, Timing]
    failed: dict[str, tuple[str, str]]
    group: GroupTiming


@dataclass
class _Run:
    """The raw readings of the rounds as they are taken."""

    samples: dict = field(default_factory=dict)  # label -> [(per-call seconds, round index)]
    failed: dict = field(default_factory=dict)
    readings: list = field(default_factory=list)  # every reference reading, one per bracket
    probes: list = field(default_factory=list)  # per round: the lower of its two brackets
    brackets: list = field(default_factory=list)  # per round: the mean of its two brackets
    loadavg: list = field(default_factory=list)


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    *,
    device: str = "cpu",
    dtype=torch.float32,
    min_run_time_s: float = 0.2,
    per_call_s: dict[str, float] | None = None,
    seed: int = 0,
    reference: Reference | None = None,
    baseline_gflops: float | None = None,
    tick=None,
    load_wait_s: float = LOAD_WAIT_S,
) -> Rounds:
    """Time warm callables in interleaved rounds (see the module's docstring). `per_call_s`: one
    call's duration where known (it sizes the blocks; else one call is timed); `baseline_gflops`:
    a quiet reference rate seen before in this run (the higher of it and this process's own
    `quiet_rate` judges the rounds); `tick(label)` is called as each block starts ("" between);
    `load_wait_s`: how long the group may wait for quiet rounds on a busy machine (0: not at all,
    for a check of a script whose times are not figures)."""
    ref = reference or Reference(device, dtype)
    timers = {label: Block(fn, device) for label, fn in calls.items()}
    per_call = _sized(timers, per_call_s or {}, min_run_time_s)
    planned, blocks = rounds_for(per_call, min_run_time_s)
    history = _PROBE_HISTORY.setdefault((device, str(dtype).replace("torch.", "")), [])
    started, meter = time.monotonic(), load.CpuMeter().start()
    run = _rounds(timers, blocks, planned, ref, history, baseline_gflops, seed, tick, load_wait_s)
    best = max(quiet_rate(history[-HISTORY:] + run.readings), baseline_gflops or 0.0)
    machine = meter.stop()
    history.extend(run.readings)
    del history[:-HISTORY]
    used, loaded_rounds, peak, too_few_quiet = _judge(run, best)
    reasons, usual = _load_reasons(too_few_quiet, machine, run, peak, ref, device)
    timings = {}
    for label, got in run.samples.items():
        if label in run.failed or not got:
            run.failed.setdefault(label, ("error", "no timed round"))
            continue
        use = sorted([(t, i) for t, i in got if i in used] or got, key=lambda s: s[1])
        timings[label] = Timing(tuple(t * 1e3 for t, _ in use), tuple(i for _, i in use), len(got) - len(use),
                                bool(reasons))  # fmt: skip
    group = GroupTiming(
        group_id=uuid.uuid4().hex[:12],
        matmul_peak_gflops=peak,
        probe_gflops_raw=tuple(run.probes),
        rounds_total=len(run.probes),
        loaded_rounds_total=len(loaded_rounds),
        probe_best_gflops=best,
        loadavg_1m=max(run.loadavg) if run.loadavg else None,
        others_cpu_cores=machine["others_cpu_cores"],
        own_cpu_cores=machine["own_cpu_cores"],
        machine_usual_gflops=usual,
        load_reasons=tuple(reasons) or None,
        rounds_s=time.monotonic() - started,
        peak_note=ref.note,
    )
    return Rounds(timings, run.failed, group)


def _sized(timers: dict, per_call_s: dict, min_run_time_s: float) -> dict[str, float]:
    """Each callable's seconds per call: one call is a poor clock for short calls, so a block's
    worth of them is timed to size the blocks."""
    block_s = min_run_time_s / ROUNDS
    out = {}
    for label, timer in timers.items():
        t = per_call_s.get(label)
        if t is None:
            t = timer(1)
        if t < block_s:
            t = timer(max(1, min(1000, round(block_s / max(t, 1e-7)))))
        out[label] = max(t, 1e-7)
    return out


def _rounds(timers, blocks, planned, ref, history, baseline_gflops, seed, tick, load_wait_s) -> _Run:
    """The planned rounds, and extra ones while too few were quiet, as long as the budget lasts."""
    run = _Run(samples={label: [] for label in timers})
    beat = tick or (lambda label: None)

    def quiet_rounds() -> int:
        # judged against the quiet rate seen by now: a load present from the group's start shows
        # once a few quiet readings have raised the bar, and more rounds are run
        best = max(quiet_rate(history[-HISTORY:] + run.readings), baseline_gflops or 0.0)
        return sum(rate >= (1 - LOAD_TOLERANCE) * best for rate in run.probes)

    r, started, extra_deadline, after = 0, time.monotonic(), None, None
    while True:
        if r >= planned:
            if extra_deadline is None:
                # at least load_wait_s, and twice the planned rounds' own time: a group whose
                # rounds take seconds needs that long to meet a quiet stretch
                extra_deadline = time.monotonic() + (load_wait_s and max(load_wait_s, 2 * (time.monotonic() - started)))
            if quiet_rounds() >= planned or time.monotonic() > extra_deadline:
                return run
        order = [lb for lb in schedule(list(timers), 1, seed + r)[0] if lb not in run.failed]
        if not order:
            return run
        beat("")
        # one reference between consecutive rounds: the end of round r is the start of round r + 1
        before = after if r else ref.gflops()
        if not r:
            run.readings.append(before)
        for label in order:
            beat(label)
            try:
                run.samples[label].append((timers[label](blocks[label]), r))
            except (Exception, SystemExit) as e:  # noqa: BLE001 - a call that fails in the rounds ends its callable
                run.failed[label] = ("oom" if is_oom(e) else "error", f"a timed call raised {type(e).__name__}: {e}")
        beat("")
        after = ref.gflops()
        run.readings.append(after)
        run.probes.append(min(before, after))  # both brackets must be quiet for the round to be
        run.brackets.append((before + after) / 2)
        if (avg := load.loadavg()) is not None:
            run.loadavg.append(avg)
        r += 1


def _judge(run: _Run, best: float) -> tuple[set, set, float, bool]:
    """Every round judged against the quiet rate of the whole group: (the rounds used, the loaded
    ones, the peak, whether too few were quiet). With too few quiet rounds the least loaded ones
    (the highest reference rates) are used, and the group says so."""
    probes = run.probes
    loaded = {i for i, rate in enumerate(probes) if rate < (1 - LOAD_TOLERANCE) * best}
    used = [i for i in range(len(probes)) if i not in loaded]
    too_few = len(used) < MIN_ROUNDS
    if too_few:
        used = sorted(range(len(probes)), key=lambda i: -probes[i])[:MIN_ROUNDS]
    quiet = sorted(run.brackets[i] for i in used) or run.brackets
    return set(used), loaded, quiet[len(quiet) // 2], too_few


def _load_reasons(too_few_quiet: bool, machine: dict, run: _Run, peak: float, ref: Reference, device):
    """Why the group was measured on a busy machine (empty: it was not): too few quiet rounds, or
    what the machine says (others' CPU time, the load average, its usual rate). A quiet group's
    rate joins this machine's history. Returns (the reasons, this machine's usual rate or None)."""
    from ..env import environment

    env = environment()
    threads = env.get("threads") or torch.get_num_threads()
    known = load.History()
    key = load.machine_key(env, device, str(ref.dtype).replace("torch.", ""), ref.n)
    usual = known.usual(key)
    lowest_load = min(run.loadavg) if run.loadavg else None
    out = (["fewer than 6 rounds were quiet"] if too_few_quiet else []) + load.verdict(
        machine, threads, lowest_load, peak, usual, LOAD_TOLERANCE
    )
    if not out:
        known.record(key, peak)
    return out, usual


def memory_bandwidth_gbs(device: str, reps: int = 5) -> float:
    """This machine's memory read bandwidth now: the best of `reps` sums over a buffer much larger
    than the caches (a sum reads each byte once and does one add per 4 bytes: memory-bound). The
    roofline of a decoding step, which reads its cache once."""
    n = BANDWIDTH_PROBE_BYTES.get(device, 2**28) // 4
    x = torch.ones(n, device=device)
    x.sum()  # warm: pages touched
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x.sum()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    del x
    return n * 4 / best / 1e9


#: the buffer the bandwidth probe reads: far larger than any CPU's last-level cache
BANDWIDTH_PROBE_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}
