"""Every GPU check in one script, for a lent CUDA machine, in the order of what it tells:

    PYTHONPATH=. python3 benchmarks/gpu_check.py OUT_DIR [BUDGET_S]

1. a short fp32 fwd+bwd sweep (1k, 4k, 16k) and a bf16 one, with memory and a report; every row
   measured or failed for a stated reason, and the sparse patterns' memory at 16k far below naive's
   (an eager FlexAttention fallback builds every n x n score);
2. the FlexAttention backend forward and backward against the chunked path; float64 (which
   FlexAttention's kernels do not take) routed to the chunked path;
3. the conformance suite on CUDA for every plugin, with its defaults and with its own first small
   options (the plugin's `small_options` fact), and a bf16 run of each (finite, close to the same
   plugin in float64), until BUDGET_S (default 330 s) is spent;
4. where Ray is installed, a short sweep through `--executor ray` (one GPU per point);
5. decoding on CUDA: every built-in cache against the causal forward, and a short
   `--mode decode --kv-heads 2` sweep (1k, 16k) whose rows must all be ok.

Writes OUT_DIR/gpu_check.json (every check with its result), the sweeps' jsonl files and report/.
Without CUDA it writes that it skipped and exits 0, so the CPU paths never depend on it.
"""

from __future__ import annotations

import copy
import os
import sys
import time

import torch
from gpu_legs import Checks, bench, flex_leg, rows_of, small, sweep_leg

DECODERS = ("full", "sliding_window", "sliding_window_sinks", "sparse", "bigbird", "linear", "performer")


def conformance_leg(c: Checks, deadline: float, budget_s: float) -> None:
    import effattn
    from effattn.testing import run_checks

    for name in effattn.list_attention():
        why = effattn.get_entry(name).availability("cuda")
        if time.monotonic() > deadline:
            c.record(f"conformance {name}", False, f"not run: the script's {budget_s:g} s were spent")
            continue
        if why:
            c.record(f"conformance {name}", True, f"skipped: {why}")
            continue
        for opts in ({}, small(name)) if small(name) else ({},):

            def check(name=name, opts=opts):
                bad = [f"{r.name}: {r.detail}" for r in run_checks(name, device="cuda", **opts) if not r.passed]
                c.record(f"conformance {name} {opts}", not bad, "; ".join(bad) or "all passed")

            c.guard(f"conformance {name} {opts}", check)

        def bf16(name=name):  # runs, finite, close to the same plugin (same features/projections) in float64
            attn = effattn.create_attention(name, **small(name)).cuda()
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", generator=g) for _ in range(3))
            with torch.no_grad():
                out = attn(q.bfloat16(), k.bfloat16(), v.bfloat16()).double()
                ref = copy.deepcopy(attn).double()(q.double(), k.double(), v.double())
            err = float((out - ref).norm() / ref.norm())
            # bf16 keeps 8 bits of mantissa; random-feature maps (exp) amplify it (CPU: performer 2.7e-2)
            limit = 3e-2 if effattn.get_entry(name).facts.exact else 6e-2
            c.record(f"bf16 {name}", bool(torch.isfinite(out).all().item()) and err < limit,
                     f"rel err vs its own float64 {err:.2e} (limit {limit:.0e})")  # fmt: skip

        c.guard(f"bf16 {name}", bf16)


def ray_leg(c: Checks) -> None:
    """The Ray executor on a GPU: each point a task with one GPU (CUDA_VISIBLE_DEVICES set by Ray)."""
    try:
        import ray  # noqa: F401 - importing it is the check
    except ImportError:
        return c.record("ray executor on cuda", True, "skipped: Ray is not installed (pip install 'effattn[ray]')")
    out = os.path.join(c.out_dir, "sweep-ray.jsonl")

    def check():
        bench("bench", "--executor", "ray", "--device", "cuda", "--seq-lens", "1k,4k", "--attn", "full,sliding_window",
              "--out", out, "--overwrite")  # fmt: skip
        rows = rows_of(out)
        good = [r for r in rows if r["status"] == "ok" and r["executor"] == "ray" and (r.get("env") or {}).get("gpu")]
        points = ", ".join(f"{r['label']}@{r['seq_len']} {r['status']}" for r in rows)
        c.record(
            "ray executor on cuda", len(good) == len(rows) == 4, f"{len(good)}/{len(rows)} ok with a GPU: {points}"
        )

    c.guard("ray executor on cuda", check)


def decode_leg(c: Checks) -> None:
    """Decoding on CUDA: the caches against the causal forward, then a short decode sweep."""
    import effattn
    from effattn.testing import run_checks

    for name in DECODERS:

        def check(name=name):
            attn = effattn.create_attention(name, **small(name))
            res = {r.name: r for only in ("decode_matches_causal_forward", "grouped_query_heads")
                   for r in run_checks(attn, device="cuda", only=only)}  # fmt: skip
            bad = [f"{n}: {r.detail[:300]}" for n, r in res.items() if r.status == "failed"]
            c.record(
                f"decode {name} (cuda)", not bad, "; ".join(bad) or "; ".join(r.detail[:120] for r in res.values())
            )

        c.guard(f"decode {name} (cuda)", check)
    out = os.path.join(c.out_dir, "sweep-decode.jsonl")

    def sweep():
        bench("bench", "--mode", "decode", "--device", "cuda", "--kv-heads", "2", "--seq-lens", "1k,16k",
              "--attn", "full,sliding_window,linear", "--min-run-time", "0.1", "--out", out)  # fmt: skip
        rows = rows_of(out)
        bad = [f"{r['label']} n={r['seq_len']}: {r['status']} {r.get('reason')}" for r in rows if r["status"] != "ok"]
        bw = ", ".join(
            f"{r['label']} n={r['seq_len']} {r.get('bandwidth_fraction') or 0:.0%} of read peak" for r in rows
        )
        c.record("decode sweep (cuda)", not bad and len(rows) == 6, "; ".join(bad) or bw)

    c.guard("decode sweep (cuda)", sweep)


def main(out_dir: str, budget_s: float = 330.0) -> int:
    """Most telling first (the sweep, FlexAttention's backward), the long conformance runs last:
    past `budget_s` the remaining plugins' conformance is recorded as not run."""
    deadline = time.monotonic() + budget_s
    os.makedirs(out_dir, exist_ok=True)
    c = Checks(out_dir)
    if not torch.cuda.is_available():
        c.result["skipped"] = "no CUDA device: nothing to check"
        print(c.result["skipped"])
        c.save()
        return 0
    from effattn.env import environment

    c.result["env"] = environment()
    sweep_leg(c)
    flex_leg(c)
    conformance_leg(c, deadline, budget_s)
    ray_leg(c)
    decode_leg(c)
    failed = [x for x in c.result["checks"] if not x["ok"]]
    c.result["summary"] = f"{len(c.result['checks']) - len(failed)} passed, {len(failed)} failed"
    print(c.result["summary"])
    c.save()
    return 1 if failed else 0


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
