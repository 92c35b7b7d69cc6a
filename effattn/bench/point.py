"""One point of a sweep: (variant, seq_len) under a sweep spec, measured in this process."""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict, dataclass, field

import torch

from ..errors import EffattnError, UnsupportedError
from ..spec import Variant
from . import measure

LEVELS = ("attention", "layer", "model")
MODES = ("fwd", "fwdbwd")
#: own-dense-reference error is computed up to this length (it needs an n x n mask)
DENSE_REF_MAX_N = 4096


@dataclass
class SweepSpec:
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
    inputs: str = "random"   # or "trained": q, k, v from a backbone trained on MQAR (attention level)

    def point_config(self) -> dict:
        d = asdict(self)
        for k in ("seq_lens", "variants"):
            d.pop(k)
        return d


def point_key(row: dict) -> tuple:
    """What makes two rows the same point (resume matches on this)."""
    return tuple(row.get(k) for k in ("label", "seq_len", "device", "dtype", "batch", "heads", "head_dim",
                                      "causal", "mode", "level"))


def _inputs(spec: SweepSpec, n: int, requires_grad: bool):
    g = torch.Generator().manual_seed(spec.seed + n)
    dtype = getattr(torch, spec.dtype)
    if spec.inputs == "trained" and spec.level == "attention":
        from .inputs import trained_qkv

        qkv, _ = trained_qkv(spec.batch, spec.heads, spec.head_dim, n, spec.seed)
        return tuple(t.to(device=spec.device, dtype=dtype).requires_grad_(requires_grad) for t in qkv)
    mk = lambda *shape: torch.randn(*shape, generator=g).to(device=spec.device, dtype=dtype).requires_grad_(requires_grad)
    B, H, D = spec.batch, spec.heads, spec.head_dim
    if spec.level == "attention":
        return mk(B, H, n, D), mk(B, H, n, D), mk(B, H, n, D)
    if spec.level == "layer":
        return (mk(B, n, H * D),)
    return (torch.randint(0, 256, (B, n), generator=g).to(spec.device),)


def _build(spec: SweepSpec, variant: Variant):
    dtype = getattr(torch, spec.dtype)
    if spec.level == "attention":
        return variant.build().to(spec.device, dtype)
    if spec.level == "layer":
        from ..model import MultiHeadAttention

        return MultiHeadAttention(spec.heads * spec.head_dim, spec.heads, variant.name, variant.options,
                                  causal=spec.causal).to(spec.device, dtype)
    from ..model import Transformer, TransformerConfig

    cfg = TransformerConfig(vocab_size=256, d_model=spec.heads * spec.head_dim, n_heads=spec.heads, n_layers=2,
                            d_ff=4 * spec.heads * spec.head_dim, dropout=0.0, attention=variant.name,
                            attention_options=variant.options)
    return Transformer(cfg, "decoder" if spec.causal else "encoder").to(spec.device, dtype)


def _core(module, level):
    if level == "attention":
        return module
    if level == "layer":
        return module.core
    return module.encoder[0].self_attn.core if len(module.encoder) else module.decoder[0].self_attn.core


def base_row(spec: SweepSpec, variant: Variant, n: int) -> dict:
    """What every row of this point says it is, whatever became of it."""
    row = {"variant": variant.name, "options": variant.options, "label": variant.label, "seq_len": n,
           **spec.point_config()}
    row.pop("min_run_time_s", None)
    return row


def measure_point(spec: SweepSpec, variant: Variant, n: int) -> dict:
    """Measure one point. Never raises for the point's own failure: returns a row with a status."""
    row = {**base_row(spec, variant, n), "status": "ok", "reason": None}
    try:
        torch.manual_seed(spec.seed)
        module = _build(spec, variant)
        core = _core(module, spec.level)
        facts_causal = getattr(core, "supports_causal", False)
        if spec.causal and not facts_causal:
            raise UnsupportedError(f"{variant.label} does not support causal attention")
        fwdbwd = spec.mode == "fwdbwd"
        inputs = _inputs(spec, n, requires_grad=fwdbwd and spec.level == "attention")
        if fwdbwd:
            module.train()
        else:
            module.eval()

        def call():
            if spec.level == "attention":
                return module(*inputs, causal=spec.causal)
            return module(*inputs)

        def step():
            if fwdbwd:
                out = call()
                out.float().square().mean().backward()
                for t in inputs:
                    t.grad = None
                module.zero_grad(set_to_none=True)
                return out
            with torch.no_grad():
                return call()

        t0 = time.perf_counter()
        out = step()
        first_ms = (time.perf_counter() - t0) * 1e3
        if first_ms / 1e3 > spec.timeout_s:
            return {**row, "status": "timeout", "reason": f"one call took {first_ms / 1e3:.1f} s > timeout {spec.timeout_s:g} s"}
        row["backend"] = getattr(core, "last_backend", None)
        row.update(measure.time_callable(step, spec.min_run_time_s))
        row["first_call_ms"] = max(row["first_call_ms"], first_ms)
        row["peak_mem_bytes"] = measure.peak_memory_bytes(step, spec.device)
        if spec.memory_budget_bytes and row["peak_mem_bytes"] > spec.memory_budget_bytes:
            row["status"], row["reason"] = "oom", (
                f"peak {row['peak_mem_bytes']} bytes exceeds the memory budget {spec.memory_budget_bytes}")
        pairs = measure.attended_pairs(core, n, n, spec.causal)
        flops = 4 * spec.batch * spec.heads * spec.head_dim * pairs * (3.5 if fwdbwd else 1.0)
        row["attended_pairs"] = pairs
        row["flops"] = flops
        exact = getattr(core, "exact", False)
        row["exact"] = bool(exact)
        row["gflops"] = flops / (row["time_ms"] / 1e3) / 1e9 if exact and spec.level == "attention" else None
        if spec.error and spec.level == "attention":
            row.update(_errors(spec, core, inputs, n))
    except torch.cuda.OutOfMemoryError as e:
        row.update(status="oom", reason=str(e).splitlines()[0])
    except MemoryError as e:
        row.update(status="oom", reason=f"MemoryError: {e}")
    except RuntimeError as e:
        msg = str(e)
        if "out of memory" in msg.lower() or "can't allocate memory" in msg.lower() or "DefaultCPUAllocator" in msg:
            row.update(status="oom", reason=msg.splitlines()[0])
        else:
            row.update(status="error", reason=f"RuntimeError: {msg.splitlines()[0] if msg else ''}",
                       traceback=traceback.format_exc(limit=6))
    except (UnsupportedError, EffattnError) as e:
        row.update(status="unsupported", reason=str(e))
    except Exception as e:  # noqa: BLE001 - every failure is a recorded status, the sweep goes on
        row.update(status="error", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6))
    return row


def _errors(spec, core, inputs, n) -> dict:
    """Error of this variant against exact softmax (`full`) and, for exact pattern plugins,
    against its own dense masked reference (a bug detector: should be ~1e-6)."""
    from ..attention.full import dense_attention
    from ..registry import create_attention

    q, k, v = (t.detach() for t in inputs)
    with torch.no_grad():
        out = core(q, k, v, causal=spec.causal)
        ref = create_attention("full")(q, k, v, causal=spec.causal)
        rel, cos = measure.output_errors(out, ref)
        res = {"rel_err_vs_full": rel, "cosine_vs_full": cos, "rel_err_vs_own_dense": None}
        mask = getattr(core, "dense_mask", None)
        if getattr(core, "exact", False) and callable(mask) and n <= DENSE_REF_MAX_N:
            own = dense_attention(q.double(), k.double(), v.double(), mask(n, n, spec.causal).to(q.device))
            res["rel_err_vs_own_dense"] = measure.output_errors(out, own)[0]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}
