"""The newer variants against their reference implementations: for each case of
`reference_impls.CASES` (nsa, moba, gla, deltanet, gated_deltanet, sliding_window_sinks), its speed,
memory and error against its reference and against `full` (SDPA), on the same q, k, v and gates.

    python benchmarks/references.py run --out results/references/references-cpu.jsonl
    python benchmarks/references.py run --quick --out /tmp/references-quick.jsonl   # checks the script
    python benchmarks/references.py table results/references/references-cpu.jsonl

All calls are causal, batch 1, 4 heads, head_dim 64, float32 (q, k, v standard normal, seeded);
`--quick` runs n = 128, 256 with options scaled down so that block selections really choose.
Per case and length the rows (kind "reference", label = the case, `measure` says which) are:

- `fwd`, `fwdbwd`: seconds per call of ours, the reference and `full`, timed together by
  effattn's timing engine (`effattn.bench.timing.time_interleaved`: interleaved rounds bracketed
  by a matmul that gives the peak of the same run), and the ratios between them. A bare time means
  nothing across machines; a ratio measured in one run does. Forward+backward is one forward with
  autograd and `torch.autograd.grad` into q, k, v and the plugin's parameters.
- `memory`: peak bytes allocated by one forward above what was allocated before it.
- `error_float32` (and `error_float64` where the reference takes float64): max abs and relative
  Frobenius difference of ours against the reference and against `full`.

A reference whose single call runs past `--max-ref-seconds` is interrupted (SIGALRM, between
Python statements) and recorded as "skipped: too slow". Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from reference_impls import CASE_NAMES, CASES, B, D, H, TooSlow, errors, first_call, make_reference, why_failed
from references_table import Fail, load_rows, table

from effattn import create_attention
from effattn.bench.measure import peak_memory_bytes
from effattn.bench.timing import time_interleaved
from effattn.env import environment
from effattn.spec import parse_seq_lens

LENGTHS, QUICK_LENGTHS = "1024,4096", "128,256"
FLA_NOTE = "fla-core's naive references compute in float32 whatever they are given"
LABS = ("ours", "reference", "full")


def timed(measure: str, calls: dict, skipped: dict, args, seed: int) -> dict:
    """One timing row: each live callable's first call (the reference under --max-ref-seconds),
    then all of them in interleaved rounds."""
    live, per_call = {}, {}
    for lab, fn in calls.items():
        try:
            first_call(fn, args.max_ref_seconds if lab == "reference" else None)  # warm: plans, allocator
            _, per_call[lab] = first_call(fn, args.max_ref_seconds if lab == "reference" else None)
            live[lab] = fn
        except Exception as e:  # noqa: BLE001 - a failing reference is a row, not the end of the run
            skipped[lab] = why_failed(e, "forward" if measure == "fwd" else "forward+backward", args.max_ref_seconds)
    wait = 0.0 if args.quick else 10.0  # --quick checks the script: its times are no figures, no waiting for quiet
    got = time_interleaved(live, min_run_time_s=args.min_run_time, per_call_s=per_call, seed=seed, load_wait_s=wait)
    row = {"measure": measure, "unit": "s", "matmul_peak_gflops": got.group.matmul_peak_gflops,
           "loaded": bool(got.group.load_reasons)}  # fmt: skip
    for lab in LABS:
        t = got.timings.get(lab)
        row[lab] = t.time_ms / 1e3 if t else skipped.get(lab) or "error: " + got.failed.get(lab, ("", "?"))[1]
        if t:
            row[f"{lab}_rounds"] = len(t.samples_ms)
    for a, b in (("ours", "reference"), ("ours", "full"), ("reference", "full")):
        num = all(isinstance(row[x], float) for x in (a, b))
        row[f"{a}_over_{b}"] = row[a] / row[b] if num else None
    return row


def measure_case(case, n: int, args, env: dict, emit) -> None:
    name, variant, opts, qopts, ref_name, independent = case
    opts = dict(qopts if args.quick else opts)
    base = {"kind": "reference", "label": name, "seq_len": n, "status": "ok", "case": name, "variant": variant,
            "options": opts, "reference_impl": ref_name, "reference_independent": independent, "n": n, "batch": B,
            "heads": H, "head_dim": D, "causal": True, "dtype": "float32", "env": env}  # fmt: skip
    attn, full = create_attention(variant, **opts), create_attention("full")
    ref, takes64 = make_reference(name, attn)
    g = torch.Generator().manual_seed(args.seed + n)
    q, k, v = (torch.randn(B, H, n, D, generator=g) for _ in range(3))
    gout = torch.randn(B, H, n, D, generator=g)
    fns = {"ours": lambda q, k, v: attn(q, k, v, causal=True), "full": lambda q, k, v: full(q, k, v, causal=True)}
    skipped = {"reference": takes64} if ref is None else {}  # takes64 holds the reason then
    if ref is not None:
        fns["reference"] = ref

    outs = {}
    with torch.no_grad():
        for lab, fn in fns.items():
            try:
                limit = args.max_ref_seconds if lab == "reference" else None
                outs[lab], _ = first_call(lambda fn=fn: fn(q, k, v), limit)
                if not torch.isfinite(outs[lab]).all():
                    skipped[lab] = "error: non-finite output"
            except Exception as e:  # noqa: BLE001
                skipped[lab] = why_failed(e, "forward", args.max_ref_seconds)
        outs = {lab: o for lab, o in outs.items() if lab not in skipped}
        live = {lab: fn for lab, fn in fns.items() if lab not in skipped}
        fwd = {lab: (lambda fn=fn: fn(q, k, v)) for lab, fn in live.items()}
        emit(base | timed("fwd", fwd, skipped, args, args.seed))

    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    wrt = [qg, kg, vg, *attn.parameters()]

    def fb(fn):
        return lambda: torch.autograd.grad(fn(qg, kg, vg), wrt, gout, allow_unused=True)

    emit(base | timed("fwdbwd", {lab: fb(fn) for lab, fn in live.items()}, dict(skipped), args, args.seed + 1))

    row = dict(base, measure="memory", unit="bytes")
    with torch.no_grad():
        for lab in LABS:
            fn = live.get(lab)
            row[lab] = peak_memory_bytes(lambda fn=fn: fn(q, k, v), "cpu") if fn else skipped.get(lab, "not measured")
    ints = {lab: row[lab] for lab in LABS if isinstance(row[lab], int) and row[lab] > 0}
    row["ours_over_reference"] = ints["ours"] / ints["reference"] if {"ours", "reference"} <= set(ints) else None
    row["ours_over_full"] = ints["ours"] / ints["full"] if {"ours", "full"} <= set(ints) else None
    emit(row)

    row = dict(base, measure="error_float32", ours_vs_full=errors(outs["ours"], outs["full"]))
    if "reference" in outs:
        row["ours_vs_reference"] = errors(outs["ours"], outs["reference"])
        row["reference_dtype"], row["note"] = ("float64", "") if takes64 is True else ("float32", FLA_NOTE)
    else:
        row["ours_vs_reference"] = skipped.get("reference", "not measured")
    emit(row)
    if takes64 is True:
        a64 = copy.deepcopy(attn).double()
        q64, k64, v64 = q.double(), k.double(), v.double()
        ref64, _ = make_reference(name, a64)
        row = dict(base, measure="error_float64", dtype="float64")
        with torch.no_grad():
            o64 = a64(q64, k64, v64, causal=True)
            try:
                r64, _ = first_call(lambda: ref64(q64, k64, v64), args.max_ref_seconds)
                row["ours_vs_reference"] = errors(o64, r64)
            except TooSlow as e:
                row["ours_vs_reference"] = why_failed(e, "forward", args.max_ref_seconds)
            row["ours_vs_full"] = errors(o64, full(q64, k64, v64, causal=True))
        emit(row)


def run(args) -> int:
    for opt, text, what in (("--lengths", args.lengths, "lengths (e.g. 1024,4096)"),
                            ("--variants", args.variants, f"cases of {', '.join(CASE_NAMES)}")):  # fmt: skip
        if text is not None and not text.strip(" ,"):
            raise Fail(f"{opt} is empty: give comma-separated {what}")
    try:
        lengths = parse_seq_lens(args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS))
    except Exception as e:  # noqa: BLE001 - effattn's own parser says what is wrong in one line
        raise Fail(f"--lengths: {e} (give positive integers, e.g. 1024,4096 or 1k,4k)") from None
    names = [x.strip() for x in args.variants.split(",") if x.strip()] if args.variants else CASE_NAMES
    if bad := [x for x in names if x not in CASE_NAMES]:
        raise Fail(f"unknown variant {', '.join(bad)}; known: {', '.join(CASE_NAMES)}")
    if args.min_run_time is None:
        args.min_run_time = 0.05 if args.quick else 1.0
    if not (args.min_run_time > 0 and math.isfinite(args.min_run_time)):
        raise Fail(f"--min-run-time must be positive seconds, not {args.min_run_time}")
    if not (args.max_ref_seconds > 0 and math.isfinite(args.max_ref_seconds)):
        raise Fail(f"--max-ref-seconds must be positive, not {args.max_ref_seconds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fh = args.out.open("a" if args.append else "w")
    except OSError as e:
        raise Fail(f"cannot write {args.out}: {e.strerror or e}") from None
    e = environment()
    env = {k: e.get(k) for k in ("effattn", "torch", "python", "cpu", "cpu_count", "git_commit")}
    env["threads"] = torch.get_num_threads()
    t_all = time.perf_counter()
    with fh:
        for n in lengths:
            for case in (c for c in CASES if c[0] in names):
                t0 = time.perf_counter()
                measure_case(case, n, args, env, lambda row: (fh.write(json.dumps(row) + "\n"), fh.flush()))
                print(f"references: {case[0]} n={n}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print(f"references: {time.perf_counter() - t_all:.1f} s in all; rows in {args.out}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure every case at every length; JSON lines to --out")
    r.add_argument("--out", type=Path, default=Path("results/references/references-cpu.jsonl"))
    r.add_argument("--lengths", help=f"comma list of n (default {LENGTHS}; --quick: {QUICK_LENGTHS})")
    r.add_argument("--quick", action="store_true", help=f"n = {QUICK_LENGTHS}, small options: checks the script")
    r.add_argument("--variants", help=f"comma list of cases (default all: {','.join(CASE_NAMES)})")
    r.add_argument("--min-run-time", type=float, help="seconds of rounds per callable (default 1, --quick 0.05)")
    r.add_argument("--max-ref-seconds", type=float, default=60.0,
                   help="a reference call slower than this is skipped: too slow (default 60)")  # fmt: skip
    r.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    t = sub.add_parser("table", help="print the markdown tables of a rows file")
    t.add_argument("file", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "run":
            return run(a)
        print(table(load_rows(a.file)))
        return 0
    except Fail as e:
        print(f"references: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
