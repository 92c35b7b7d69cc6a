"""A group: the variants of one length, prepared one by one (`prepare_point`, `prepare_decode`),
timed together in interleaved rounds (`effattn.bench.timing`), then called once more each under
watch. One row per variant, in their order."""

from __future__ import annotations

import torch

from ..env import environment
from ..errors import EffattnError
from ..guard import TorchState
from ..spec import Variant
from . import measure
from .decode import prepare_decode
from .measurement import Measurement
from .point import InputSet, Prepared, prepare_point
from .spec import SweepSpec
from .timing import GroupTiming, Reference, is_oom, memory_bandwidth_gbs, time_interleaved
from .validate import CoreWatch


def measure_group(
    spec: SweepSpec, variants: list[Variant], n: int, tick=None, baseline_gflops: float | None = None
) -> list[dict]:
    """Measure every variant of one length, interleaved; one row per variant, in their order.
    `baseline_gflops`: the quiet reference rate the caller has seen in this run (the median of its
    groups' quiet rates); load detection judges against the higher of it and this process's own.
    `tick(label)`, if given, is called as each call starts (the measuring process's heartbeat)."""
    env = environment()
    return [m.row(env) for m in measure_points(spec, variants, n, tick, baseline_gflops)]


def measure_point(spec: SweepSpec, variant: Variant, n: int, tick=None) -> dict:
    """Measure one point in this process (a group of one)."""
    return measure_group(spec, [variant], n, tick=tick)[0]


def measure_points(spec: SweepSpec, variants, n: int, tick=None, baseline_gflops=None) -> list[Measurement]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EffattnError(f"sequence length must be an integer > 0, got {n!r}")
    if spec.device == "cuda":
        torch.cuda.empty_cache()  # what earlier lengths left in the allocator's cache is free again
    points = [spec.point(v, n) for v in variants]
    try:
        # first: its memory is taken before any point's budget is checked, and a device that
        # cannot run it fails here, for every point alike
        ref = Reference(spec.device, spec.torch_dtype)
    except Exception as e:  # noqa: BLE001 - a reference that cannot run is every point's recorded failure
        why = f"cannot run the reference matmul on {spec.device}: {type(e).__name__}: {e}"
        return [Measurement(p).end("oom" if is_oom(e) else "error", why) for p in points]
    inputs = InputSet(spec, n)
    inputs.matmul_gflops = ref.first_gflops
    guard, prepared = TorchState(), []
    prepare = prepare_decode if spec.mode == "decode" else prepare_point
    for p in points:
        got = prepare(p, inputs, tick)
        changed = guard.restore()  # a plugin that changed torch's global state: an error, undone
        if changed:
            got.measurement.end("error", f"{p.label} {changed}")
        prepared.append(got)
    if tick is not None:
        tick("")  # the group's own work, no variant's
    inputs.drop_references()  # the error columns are done: their references are not timed
    group = _time(spec, [p for p in prepared if p.ready], ref, n, tick, baseline_gflops)
    if spec.mode == "decode":  # the roofline of a step that reads its cache: this machine's bandwidth now
        try:
            bandwidth = memory_bandwidth_gbs(spec.device)
        except Exception:  # noqa: BLE001 - no bandwidth figure is better than a failed group
            bandwidth = None
        group = GroupTiming(**{**group.__dict__, "membw_peak_gbs": bandwidth})
    for p in prepared:
        p.measurement.group = group
    _last_call([p for p in prepared if p.ready], guard, tick, spec.memory_budget_bytes)
    return [p.measurement for p in prepared]


def _time(spec, ready: list[Prepared], ref, n, tick, baseline_gflops) -> GroupTiming:
    """The ready points timed in interleaved rounds; with none to time, the reference alone, so
    that every row says what the machine could do."""
    if not ready:
        rates = sorted(ref.gflops() for _ in range(3))
        return GroupTiming(None, rates[1], tuple(rates), None, None, None, None, None, None, None, None, None,
                           peak_note=ref.note)  # fmt: skip
    rounds = time_interleaved(
        {p.measurement.spec.label: p.step for p in ready},
        device=spec.device,
        dtype=spec.torch_dtype,
        min_run_time_s=spec.min_run_time_s,
        per_call_s={p.measurement.spec.label: p.per_call_s for p in ready},
        seed=hash((spec.seed, n)) & 0xFFFFFFFF,
        reference=ref,
        baseline_gflops=baseline_gflops,
        tick=tick,
    )
    for p in ready:
        label = p.measurement.spec.label
        if label in rounds.failed:
            p.measurement.end(*rounds.failed[label])
        else:
            p.measurement.timing = rounds.timings[label]
    return rounds.group


def _last_call(ready: list[Prepared], guard, tick, budget: int | None) -> None:
    """One more call of every timed point, watched like the first: a plugin whose output turns bad
    after a few calls (or in a later layer than the first) is caught, and the point is an error
    instead of `ok`. The process's resident memory is watched over it: what a plugin takes outside
    torch's allocator at every call (NumPy, a library's own buffers) shows there, after the rounds
    have settled the heap (over the first calls, the allocator's growth and the loading of code
    would count too), and a point above the budget with it is `oom`."""
    for p in ready:
        m = p.measurement
        problem = None
        try:
            if tick is not None:
                tick(m.spec.label)
            with CoreWatch(*p.cores) as watch:
                m.rss_peak_bytes = _resident_peak(p)
            problem = watch.problem
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin's failure is a recorded status
            problem = f"{type(e).__name__}: {e}"
        changed = guard.restore()
        if problem or changed:
            m.end("error", f"after {len(m.timing.samples_ms)} timed rounds: {problem or changed}")
            continue
        rss, inputs = m.rss_peak_bytes, m.input_bytes or 0
        if budget and rss is not None and rss > (m.peak_mem_bytes or 0) and inputs + rss > budget:
            m.end(
                "oom",
                f"inputs {inputs} + resident peak (memory outside torch's allocator) {rss} bytes exceed the memory "
                f"budget {budget}",
            )


def _resident_peak(p: Prepared) -> int | None:
    """The resident memory one call of the point takes above what was resident before it. Where it
    exceeds the peak torch measured, the call is made once more and the lower reading kept: the
    allocator's heap now and then grows again by memory torch had freed (glibc serves a freed large
    block from a raised mmap threshold, then trims it), which is noise; what a plugin takes outside
    torch at every call shows in both readings."""
    readings = []
    for _ in range(2):
        resident = measure.ResidentPeak()
        p.step()
        readings.append(resident.peak())
        if readings[-1] is None or readings[-1] <= (p.measurement.peak_mem_bytes or 0):
            break
    return None if readings[-1] is None else min(readings)
