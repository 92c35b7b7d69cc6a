"""Measuring tools: peak memory (CUDA allocator stats, or the CPU profiler's allocator events),
resident memory, attended pairs and FLOPs, available memory, output errors.

Nothing is timed here: `timing.py` is effattn's one timing engine (interleaved rounds of bare
blocks, bracketed by the matmul reference that gives the peak), and `point.py` makes and checks a
point's first calls.
"""

from __future__ import annotations

import contextlib
import os

import torch


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop banners on fd 2; keep the user's terminal clean."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def profile_memory(fn, device: str, with_events: bool = False):
    """Run `fn()` once and return (its result, peak bytes, net bytes): the peak allocated during
    the call above what was allocated before it, and what the call left allocated (its result
    included). With `with_events`, a fourth value: how many allocator events were seen (on CPU
    the profiler now and then records none at all for a call - seen about once in 60 sessions -
    and a caller that knows the call allocated can measure again).

    CUDA: `memory_allocated` and `max_memory_allocated` after a reset. CPU: the allocator's own
    alloc/free events from the PyTorch profiler, replayed in order (a real measurement, not an
    estimate)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        got = (result, int(torch.cuda.max_memory_allocated() - base), int(torch.cuda.memory_allocated() - base))
        return got + (1,) if with_events else got
    # The autograd profiler records the same allocator events as `torch.profiler.profile`, without
    # importing torch._dynamo (about 3 s per fresh process: every isolated or Ray point paid it).
    from torch.autograd.profiler import profile

    with _quiet_stderr():
        with profile(use_cpu=True, profile_memory=True) as prof:
            result = fn()
    events = [e for e in prof.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type() == 0 or device == "cpu":  # CPU allocations
            cur += e.nbytes()
            peak = max(peak, cur)
    return (result, int(peak), int(cur), len(events)) if with_events else (result, int(peak), int(cur))


def peak_memory_bytes(fn, device: str, tries: int = 3) -> int:
    """Peak bytes allocated by one call above what was allocated before it. A profile that saw
    no allocator event for a call returning a tensor lost its events: it is measured again."""
    for _ in range(tries):
        result, peak, _, seen = profile_memory(fn, device, with_events=True)
        if seen or not (isinstance(result, torch.Tensor) and result.numel()):
            break
    return peak


class ResidentPeak:
    """The measuring process's resident memory at its highest since this object was made, above
    what was resident then: memory a plugin takes outside torch's allocator (NumPy, a C library)
    counts here and nowhere else. Linux: the kernel's high-water mark (VmHWM), reset through
    /proc/self/clear_refs; `peak()` is None where that cannot be read (other systems)."""

    def __init__(self):
        self.base = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
            self.base = _status_kib("VmRSS")
        except OSError:
            pass

    def peak(self) -> int | None:
        if self.base is None:
            return None
        try:
            hwm = _status_kib("VmHWM")
        except OSError:
            return None
        return None if hwm is None else max(0, hwm - self.base) * 1024


def _status_kib(field: str) -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind some tensors (a view counts its whole storage)."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
    return total


def available_memory_bytes(device: str) -> int:
    """Memory a point may still take: free GPU memory plus what PyTorch's allocator holds in its
    cache unused (free to the point, though not to the driver), or MemAvailable on Linux."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


_PEAK_CACHE: dict = {}


def output_errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative error ||out - ref|| / ||ref||, cosine similarity), in float64."""
    a, b = out.detach().double().flatten(), ref.detach().double().flatten()
    rel = float((a - b).norm() / b.norm().clamp_min(1e-30))
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    return rel, cos
