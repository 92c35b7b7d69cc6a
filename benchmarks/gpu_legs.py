"""The first legs of benchmarks/gpu_check.py (the sweeps, FlexAttention) and the record the
checks write (`Checks`). See that script's docstring."""

from __future__ import annotations

import json
import os
import time
import traceback

import torch


class Checks:
    """The checks' record, saved after each one (a run cut short keeps what it found)."""

    def __init__(self, out_dir: str):
        self.out_dir, self.result = out_dir, {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "checks": []}

    def record(self, name, ok, detail):
        self.result["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        self.save()

    def guard(self, name, fn):
        """Run one check; an exception is that check's failure, and the script goes on."""
        try:
            fn()
        except SystemExit as e:
            self.record(name, e.code in (0, None), f"exit {e.code}")
        except Exception as e:  # noqa: BLE001 - a failed check is recorded and the script goes on
            self.record(name, False, f"{type(e).__name__}: {str(e)[:400]}\n{traceback.format_exc(limit=3)}")

    def save(self):
        with open(os.path.join(self.out_dir, "gpu_check.json"), "w") as f:
            json.dump(self.result, f, indent=1, default=str)


def small(name: str) -> dict:
    """The plugin's own first small options (its `small_options` fact), or none."""
    import effattn

    opts = effattn.get_entry(name).facts.small_options
    return dict(opts[0]) if opts else {}


def rows_of(path: str) -> list[dict]:
    from effattn.store import read_results

    return read_results(path, missing_ok=False)[0]


def bench(*argv: str) -> None:
    """One effattn command; a non-zero exit raises (SystemExit), which `Checks.guard` records."""
    from effattn.cli import main as cli_main

    try:
        cli_main(list(argv))
    except SystemExit as e:
        if e.code not in (0, None):
            raise


def command(c: Checks, name: str, *argv: str) -> None:
    """An effattn command as a check of its own: ok when it exits 0."""
    c.guard(name, lambda: (bench(*argv), c.record(name, True, "exit 0")))


def sweep_leg(c: Checks) -> None:
    import effattn

    sweep, bf16 = (os.path.join(c.out_dir, f) for f in ("sweep.jsonl", "sweep-bf16.jsonl"))
    attn = "full,naive,sliding_window,bigbird,linear,performer"
    if effattn.get_entry("xformers").availability("cuda") is None:
        attn += ",xformers"
    command(c, "bench fwdbwd", "bench", "--device", "cuda", "--seq-lens", "1k,4k,16k", "--attn", attn, "--mode",
            "fwdbwd", "--timeout", "60", "--out", sweep, "--overwrite")  # fmt: skip
    command(c, "bench bf16", "bench", "--device", "cuda", "--dtype", "bfloat16", "--seq-lens", "4k,16k", "--attn",
            "full,naive", "--out", bf16, "--overwrite")  # fmt: skip
    command(c, "report", "report", sweep, "--out", os.path.join(c.out_dir, "report"), "--format", "md,html")
    for path in (sweep, bf16):  # every point measured or failed for a stated reason; no false faults

        def check(path=path):
            rows = rows_of(path)
            faults = [f"{r['label']}@{r['seq_len']}" for r in rows if r.get("fault")]
            bad = [f"{r['label']}@{r['seq_len']}: {r['status']} {r.get('reason')}"
                   for r in rows if r["status"] not in ("ok", "oom", "skipped")]  # fmt: skip
            peaks = ", ".join(sorted({f"{r['seq_len']}:{r.get('matmul_peak_gflops') or 0:.0f}" for r in rows}))
            detail = f"{len(rows)} rows; faults: {faults or 'none'}; not ok: {bad or 'none'}; peaks {peaks}"
            c.record(f"rows of {os.path.basename(path)}", not faults and not bad, detail)

        c.guard(f"rows of {os.path.basename(path)}", check)

    def sparse_memory():  # an eager FlexAttention fallback builds every n x n score (60 GB at 16k fwd+bwd)
        rows = rows_of(sweep)
        top = max(r["seq_len"] for r in rows)
        at = {r["label"]: r for r in rows if r["seq_len"] == top and r["status"] == "ok"}
        dense = at["naive"]["peak_mem_bytes"]
        parts = [
            f"{lb} [{at[lb].get('backend')}] {at[lb]['peak_mem_bytes'] / 2**20:.0f} MiB, "
            f"{at[lb]['time_ms'] / at['full']['time_ms']:.2f}x full's time"
            for lb in ("sliding_window", "bigbird")
        ]
        ok = all(at[lb]["peak_mem_bytes"] < 0.1 * dense for lb in ("sliding_window", "bigbird"))
        c.record(f"sparse memory at {top}", ok, "; ".join(parts) + f"; naive {dense / 2**20:.0f} MiB")

    c.guard("sparse memory", sparse_memory)


def flex_leg(c: Checks) -> None:
    import effattn

    cases = (("sliding_window", dict(window=64, global_tokens=4)), ("bigbird", dict(block_size=32)),
             ("sparse", dict(pattern="fixed", stride=64, summary=4)), ("sparse", dict(stride=32)))  # fmt: skip
    for name, opts in cases:

        def check(name=name, opts=opts):
            g = torch.Generator(device="cuda").manual_seed(1)
            qkv = [torch.randn(2, 4, 1000, 64, device="cuda", generator=g, requires_grad=True) for _ in range(3)]
            outs, grads = [], []
            for backend in ("flex", "chunked"):
                for t in qkv:
                    t.grad = None
                o = effattn.create_attention(name, backend=backend, **opts)(*qkv, causal=True)
                o.square().sum().backward()
                outs.append(o.detach())
                grads.append([t.grad.clone() for t in qkv])
            err = float((outs[0] - outs[1]).norm() / outs[1].norm())
            gerr = max(float((a - b).norm() / b.norm()) for a, b in zip(*grads))
            c.record(f"flex fwd+bwd {name} {opts}", err < 1e-4 and gerr < 1e-3, f"out {err:.1e}, grads {gerr:.1e}")

        c.guard(f"flex fwd+bwd {name} {opts}", check)

    def float64():  # FlexAttention's Triton kernels do not take float64: auto must choose chunked
        q = torch.randn(1, 2, 128, 32, device="cuda", dtype=torch.float64)
        attn = effattn.create_attention("sliding_window", window=8)
        with torch.no_grad():
            attn(q, q, q)
        try:
            effattn.create_attention("sliding_window", window=8, backend="flex")(q, q, q)
            refused = "ran"
        except effattn.UnsupportedError as e:
            refused = str(e)
        c.record("float64 pattern on cuda", attn.last_backend == "chunked-sdpa" and "float64" in refused,
                 f"auto -> {attn.last_backend}; backend='flex' -> {refused[:120]}")  # fmt: skip

    c.guard("float64 pattern on cuda", float64)
