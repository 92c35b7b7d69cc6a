"""Every GPU check in one script, for a lent CUDA machine (issue #7), in the order of what it tells:

    PYTHONPATH=. python3 benchmarks/gpu_check.py OUT_DIR [BUDGET_S]

1. a short fp32 fwd+bwd sweep (1k, 4k, 16k) and a bf16 one, with memory (max_memory_allocated) and
   a report; every row measured or failed for a stated reason, and the sparse patterns' memory at
   16k far below naive's (an eager FlexAttention fallback builds every n x n score);
2. the FlexAttention backend forward and backward against the chunked path; float64 (which
   FlexAttention's kernels do not take) routed to the chunked path;
3. the conformance suite on CUDA for every plugin, fp32, and a bf16 run of each (finite, and close
   to the same plugin run in float64), until BUDGET_S (default 330 s) is spent: each exact pattern
   compiles FlexAttention per shape, seconds each;
4. where Ray is installed, a short sweep through `--executor ray` (one GPU per point);
5. decoding on CUDA: every built-in cache against the causal forward (the suite's
   `decode_matches_causal_forward` and `grouped_query_heads`, fp32), and a short
   `--mode decode --kv-heads 2` sweep (1k, 16k) whose rows must all be ok.

Writes OUT_DIR/gpu_check.json (every check with its result), sweep.jsonl, sweep-ray.jsonl and report/. Without CUDA
it writes that it skipped and exits 0, so the CPU paths never depend on it.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import traceback

import torch


def main(out_dir: str, budget_s: float = 330.0) -> int:
    """Most telling first (the sweep, FlexAttention's backward), the long conformance runs last:
    past `budget_s` the remaining plugins' conformance is recorded as not run."""
    deadline = time.monotonic() + budget_s
    os.makedirs(out_dir, exist_ok=True)
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "checks": []}
    if not torch.cuda.is_available():
        result["skipped"] = "no CUDA device: nothing to check"
        print(result["skipped"])
        _save(out_dir, result)
        return 0
    import effattn
    from effattn.env import environment
    from effattn.testing import run_checks

    result["env"] = environment()
    small = {
        "sliding_window": dict(window=8, global_tokens=2),
        "bigbird": dict(block_size=8, num_random_blocks=2),
        "sparse": dict(stride=8),
        "performer": dict(num_features=64),
        "linformer": dict(proj_len=16, max_len=256),
        "nystrom": dict(num_landmarks=8),
        "xformers": dict(window=5),
    }

    def record(name, ok, detail):
        result["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        _save(out_dir, result)

    sweep = os.path.join(out_dir, "sweep.jsonl")
    from effattn.cli import main as cli_main

    sweep_bf16 = os.path.join(out_dir, "sweep-bf16.jsonl")
    for argv in (
        [
            "bench",
            "--device",
            "cuda",
            "--seq-lens",
            "1k,4k,16k",
            "--attn",
            "full,naive,sliding_window,bigbird,linear,performer,xformers"
            if effattn.get_entry("xformers").availability("cuda") is None
            else "full,naive,sliding_window,bigbird,linear,performer",
            "--mode",
            "fwdbwd",
            "--timeout",
            "60",
            "--out",
            sweep,
            "--overwrite",
        ],
        [
            "bench",
            "--device",
            "cuda",
            "--dtype",
            "bfloat16",
            "--seq-lens",
            "4k,16k",
            "--attn",
            "full,naive",
            "--out",
            sweep_bf16,
            "--overwrite",
        ],
        ["report", sweep, "--out", os.path.join(out_dir, "report"), "--format", "md,html"],
    ):
        try:
            cli_main(argv)
        except SystemExit as e:
            record(" ".join(argv[:1]), e.code in (0, None), f"exit {e.code}")
        except Exception:  # noqa: BLE001 - a failed check is recorded and the script goes on
            record(" ".join(argv[:1]), False, traceback.format_exc(limit=3))
    for path in (sweep, sweep_bf16):  # every point measured or failed for a stated reason; no false faults
        try:
            rows = [json.loads(line) for line in open(path)]
            faults = [f"{r['label']}@{r['seq_len']}" for r in rows if r.get("fault")]
            bad = [
                f"{r['label']}@{r['seq_len']}: {r['status']} {r.get('reason')}"
                for r in rows
                if r["status"] not in ("ok", "oom", "skipped")
            ]
            record(
                f"rows of {os.path.basename(path)}",
                not faults and not bad,
                f"{len(rows)} rows; faults: {faults or 'none'}; not ok: {bad or 'none'}; peaks "
                + ", ".join(sorted({f"{r['seq_len']}:{r.get('matmul_peak_gflops') or 0:.0f}" for r in rows})),
            )
        except Exception:  # noqa: BLE001 - a failed check is recorded and the script goes on
            record(f"rows of {os.path.basename(path)}", False, traceback.format_exc(limit=3))
    try:  # the sparse patterns at the longest length take sparse memory (an eager FlexAttention
        # fallback builds every n x n score: 60 GB at 16k fwd+bwd, found on the first H200 run)
        rows = [json.loads(line) for line in open(sweep)]
        top = max(r["seq_len"] for r in rows)
        at = {r["label"]: r for r in rows if r["seq_len"] == top and r["status"] == "ok"}
        dense = at["naive"]["peak_mem_bytes"]
        parts, ok = [], True
        for label in ("sliding_window", "bigbird"):
            r = at[label]
            ok &= r["peak_mem_bytes"] < 0.1 * dense
            parts.append(
                f"{label} [{r.get('backend')}] {r['peak_mem_bytes'] / 2**20:.0f} MiB, "
                f"{r['time_ms'] / at['full']['time_ms']:.2f}x full's time"
            )
        record(f"sparse memory at {top}", ok, "; ".join(parts) + f"; naive {dense / 2**20:.0f} MiB")
    except Exception:  # noqa: BLE001 - a failed check is recorded and the script goes on
        record("sparse memory", False, traceback.format_exc(limit=3))
    for name, opts in (
        ("sliding_window", dict(window=64, global_tokens=4)),
        ("bigbird", dict(block_size=32)),
        ("sparse", dict(pattern="fixed", stride=64, summary=4)),
        ("sparse", dict(stride=32)),
    ):
        try:
            g = torch.Generator(device="cuda").manual_seed(1)
            qkv = [torch.randn(2, 4, 1000, 64, device="cuda", generator=g, requires_grad=True) for _ in range(3)]
            outs, grads = [], []
            for backend in ("flex", "chunked"):
                attn = effattn.create_attention(name, backend=backend, **opts)
                for t in qkv:
                    t.grad = None
                o = attn(*qkv, causal=True)
                o.square().sum().backward()
                outs.append(o.detach())
                grads.append([t.grad.clone() for t in qkv])
            err = float((outs[0] - outs[1]).norm() / outs[1].norm())
            gerr = max(float((a - b).norm() / b.norm()) for a, b in zip(*grads))
            record(f"flex fwd+bwd {name} {opts}", err < 1e-4 and gerr < 1e-3, f"out {err:.1e}, grads {gerr:.1e}")
        except Exception as e:  # noqa: BLE001 - a failed check is recorded and the script goes on
            record(f"flex fwd+bwd {name} {opts}", False, f"{type(e).__name__}: {str(e)[:400]}")

    try:  # float64 on CUDA: FlexAttention's Triton kernels do not take it; auto must choose chunked
        q = torch.randn(1, 2, 128, 32, device="cuda", dtype=torch.float64)
        attn = effattn.create_attention("sliding_window", window=8)
        with torch.no_grad():
            attn(q, q, q)
        auto_ok = attn.last_backend == "chunked-sdpa"
        try:
            effattn.create_attention("sliding_window", window=8, backend="flex")(q, q, q)
            refused = "ran"
        except effattn.UnsupportedError as e:
            refused = str(e)
        record(
            "float64 pattern on cuda",
            auto_ok and "float64" in refused,
            f"auto -> {attn.last_backend}; backend='flex' -> {refused[:120]}",
        )
    except Exception:  # noqa: BLE001 - a failed check is recorded and the script goes on
        record("float64 pattern on cuda", False, traceback.format_exc(limit=3))

    for name in effattn.list_attention():
        why = effattn.get_entry(name).availability("cuda")
        if time.monotonic() > deadline:
            record(f"conformance {name}", False, f"not run: the script's {budget_s:g} s were spent")
            continue
        if why:
            record(f"conformance {name}", True, f"skipped: {why}")
            continue
        for opts in ({}, small.get(name)) if small.get(name) else ({},):
            try:
                res = run_checks(name, device="cuda", **opts)
                bad = [f"{r.name}: {r.detail}" for r in res if not r.passed]
                record(f"conformance {name} {opts}", not bad, "; ".join(bad) or "all passed")
            except Exception as e:  # noqa: BLE001 - a failed check is recorded and the script goes on
                record(f"conformance {name} {opts}", False, f"{type(e).__name__}: {str(e)[:400]}")
        try:  # bf16: runs, finite, close to the same plugin (same features/projections) in float64
            attn = effattn.create_attention(name, **small.get(name, {})).cuda()
            g = torch.Generator(device="cuda").manual_seed(0)
            n = 256  # within every plugin's default limits (linformer: max_len=256)
            q, k, v = (torch.randn(2, 4, n, 64, device="cuda", generator=g) for _ in range(3))
            with torch.no_grad():
                out = attn(q.bfloat16(), k.bfloat16(), v.bfloat16()).double()
                ref = copy.deepcopy(attn).double()(q.double(), k.double(), v.double())
            err = float((out - ref).norm() / ref.norm())
            # bf16 keeps 8 bits of mantissa; random-feature maps (exp) amplify it (CPU: performer 2.7e-2)
            limit = 3e-2 if getattr(attn, "exact", False) else 6e-2
            record(
                f"bf16 {name}",
                bool(torch.isfinite(out).all().item()) and err < limit,
                f"rel err vs its own float64 {err:.2e} (limit {limit:.0e})",
            )
        except Exception as e:  # noqa: BLE001 - a failed check is recorded and the script goes on
            record(f"bf16 {name}", False, f"{type(e).__name__}: {str(e)[:400]}")

    _ray_leg(out_dir, record, cli_main)
    _decode_leg(out_dir, record, cli_main)
    failed = [c for c in result["checks"] if not c["ok"]]
    result["summary"] = f"{len(result['checks']) - len(failed)} passed, {len(failed)} failed"
    print(result["summary"])
    _save(out_dir, result)
    return 1 if failed else 0


def _decode_leg(out_dir, record, cli_main):
    """Decoding on CUDA: the caches against the causal forward, then a short decode sweep."""
    import effattn
    from effattn.testing import run_checks

    small = {"sliding_window": {"window": 16}, "sliding_window_sinks": {"window": 16},
             "sparse": {"stride": 8}, "bigbird": {"block_size": 8, "num_random_blocks": 1}}  # fmt: skip
    for name in ("full", "sliding_window", "sliding_window_sinks", "sparse", "bigbird", "linear", "performer"):
        try:
            attn = effattn.create_attention(name, **small.get(name, {}))
            res = {
                r.name: r
                for check in ("decode_matches_causal_forward", "grouped_query_heads")
                for r in run_checks(attn, device="cuda", only=check)
            }
            bad = [f"{n}: {r.detail[:300]}" for n, r in res.items() if r.status == "failed"]
            record(f"decode {name} (cuda)", not bad, "; ".join(bad) or "; ".join(r.detail[:120] for r in res.values()))
        except Exception as e:  # noqa: BLE001 - a failed check is recorded and the script goes on
            record(f"decode {name} (cuda)", False, f"{type(e).__name__}: {str(e)[:400]}")
    out = os.path.join(out_dir, "sweep-decode.jsonl")
    try:
        cli_main(["bench", "--mode", "decode", "--device", "cuda", "--kv-heads", "2", "--seq-lens", "1k,16k",
                  "--attn", "full,sliding_window,linear", "--min-run-time", "0.1", "--out", out])  # fmt: skip
        rows = [json.loads(x) for x in open(out) if x.strip()]
        bad = [f"{r['label']} n={r['seq_len']}: {r['status']} {r.get('reason')}" for r in rows if r["status"] != "ok"]
        detail = "; ".join(bad) or ", ".join(
            f"{r['label']} n={r['seq_len']} {r['time_ms']:.3f} ms bw {100 * (r.get('bandwidth_fraction') or 0):.0f}%"
            for r in rows
        )
        record("decode sweep (cuda)", not bad and len(rows) == 6, detail)
    except SystemExit as e:
        record("decode sweep (cuda)", False, f"exit {e.code}")
    except Exception as e:  # noqa: BLE001 - a failed check is recorded and the script goes on
        record("decode sweep (cuda)", False, f"{type(e).__name__}: {str(e)[:400]}")


def _ray_leg(out_dir, record, cli_main):
    """The Ray executor on a GPU: each point a task with one GPU, measured in the worker's own
    environment (CUDA_VISIBLE_DEVICES set by Ray)."""
    try:
        import ray  # noqa: F401 - importing it is the check
    except ImportError:
        record("ray executor on cuda", True, "skipped: Ray is not installed (pip install 'effattn[ray]')")
        return
    out = os.path.join(out_dir, "sweep-ray.jsonl")
    try:
        cli_main(
            [
                "bench",
                "--executor",
                "ray",
                "--device",
                "cuda",
                "--seq-lens",
                "1k,4k",
                "--attn",
                "full,sliding_window",
                "--out",
                out,
                "--overwrite",
            ]
        )
    except SystemExit as e:
        if e.code not in (0, None):
            record("ray executor on cuda", False, f"exit {e.code}")
            return
    except Exception:  # noqa: BLE001 - a failed check is recorded and the script goes on
        record("ray executor on cuda", False, traceback.format_exc(limit=3))
        return
    rows = [json.loads(line) for line in open(out)]
    good = [r for r in rows if r["status"] == "ok" and r["executor"] == "ray" and (r.get("env") or {}).get("gpu")]
    record(
        "ray executor on cuda",
        len(good) == len(rows) == 4,
        f"{len(good)}/{len(rows)} points ok on a Ray worker with a GPU: "
        + ", ".join(f"{r['label']}@{r['seq_len']} {r.get('time_ms') or 0:.2f} ms" for r in rows),
    )


def _save(out_dir, result):
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    usage = "usage: PYTHONPATH=. python3 benchmarks/gpu_check.py OUT_DIR [BUDGET_S]"
    if len(sys.argv) not in (2, 3) or not sys.argv[1].strip():
        sys.exit(usage)
    try:
        budget = float(sys.argv[2]) if len(sys.argv) == 3 else 330.0
    except ValueError:
        budget = float("nan")
    if not budget > 0 or budget == float("inf"):
        sys.exit(f"BUDGET_S must be a number of seconds > 0, got {sys.argv[2]!r}\n{usage}")
    sys.exit(main(sys.argv[1], budget))
