"""Measuring one point: time (torch.utils.benchmark), peak memory, FLOPs and output error.

Timing uses `torch.utils.benchmark.Timer.blocked_autorange`, which picks the number of repeats
itself, synchronises CUDA, and keeps raw times (median and IQR come from them). The first call
(which includes any compilation or plan building) is timed apart and never mixed in.
"""
from __future__ import annotations

import contextlib
import os
import time

import torch
import torch.utils.benchmark as tbench

NOISY_IQR_RATIO = 0.10  # IQR / median above this flags a point as noisy


def time_callable(fn, min_run_time: float = 0.2) -> dict:
    t0 = time.perf_counter()
    fn()  # warm-up: compilation, plan building, allocator growth
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    m = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time)
    med, iqr = m.median, m.iqr
    return {
        "time_ms": med * 1e3,
        "time_iqr_ms": iqr * 1e3,
        "time_raw_ms": [t * 1e3 for t in m.times],
        "first_call_ms": first * 1e3,
        "noisy": bool(med > 0 and iqr / med > NOISY_IQR_RATIO),
    }


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


def peak_memory_bytes(fn, device: str) -> int:
    """Peak bytes allocated by one call above what was allocated before it.

    CUDA: `max_memory_allocated` after a reset. CPU: the allocator's own alloc/free events from
    the PyTorch profiler, replayed in order (a real measurement, not an estimate)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    # The autograd profiler records the same allocator events as `torch.profiler.profile`, without
    # importing torch._dynamo (about 3 s per fresh process: every isolated or Ray point paid it).
    from torch.autograd.profiler import profile

    with _quiet_stderr():
        with profile(use_cpu=True, profile_memory=True) as prof:
            fn()
    events = [e for e in prof.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type() == 0 or device == "cpu":  # CPU allocations
            cur += e.nbytes()
            peak = max(peak, cur)
    return int(peak)


_PEAK_CACHE: dict = {}


def matmul_peak_gflops(device: str, dtype=torch.float32) -> float:
    """This machine's matmul throughput, measured once per process (the roofline for GFLOP/s)."""
    key = (device, dtype)
    if key not in _PEAK_CACHE:
        n = 2048 if device == "cpu" else 8192
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        t = time_callable(lambda: a @ b, min_run_time=0.3)["time_ms"] / 1e3
        _PEAK_CACHE[key] = 2 * n**3 / t / 1e9
    return _PEAK_CACHE[key]


def attended_pairs(attn, n_q: int, n_k: int, causal: bool) -> int:
    """Pairs (i, j) that take part in the softmax: the basis of useful FLOPs."""
    nnz = getattr(attn, "nnz", None)
    if callable(nnz):
        return int(nnz(n_q, n_k, causal))
    mask = getattr(attn, "dense_mask", None)
    if callable(mask) and n_q * n_k <= 2**26:
        return int(mask(n_q, n_k, causal).sum())
    # dense (or unknown): all pairs, half when causal (FlashAttention's convention)
    return n_q * n_k // 2 if causal else n_q * n_k


def output_errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative error ||out - ref|| / ||ref||, cosine similarity), in float64."""
    a, b = out.detach().double().flatten(), ref.detach().double().flatten()
    rel = float((a - b).norm() / b.norm().clamp_min(1e-30))
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    return rel, cos
