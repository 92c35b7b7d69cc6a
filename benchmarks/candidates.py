"""Do Reformer LSH, routing or Sinkhorn attention earn a place among effattn's plugins? (issue #15)

    python benchmarks/candidates.py run --out-dir results/candidates          # the full measurement
    python benchmarks/candidates.py run --out-dir /tmp/cand --quick           # a smoke test (~2 min)
    python benchmarks/candidates.py run --out-dir results/candidates --only sweep-fwd
    python benchmarks/candidates.py table results/candidates

`run` measures, in this process, through effattn's Python API (`effattn.bench.run_sweep` with
`isolation="none"`, and `run_task_sweep`, which is what `effattn bench --task` runs):

- `sweep-fwd.jsonl`: forward at n = 1k, 2k, 4k, 8k (fp32, batch 1, 8 heads, head_dim 64, effattn
  bench's defaults otherwise): time, peak memory, relative error against `full` on the same q, k, v,
  peak_fraction, for `full`, `sliding_window`, `linear`, `performer` and the three candidates;
- `sweep-fwdbwd.jsonl`: the same variants, forward + backward at n = 4k;
- `sweep-trained.jsonl`: forward at n = 1k and 4k on q, k, v from a backbone trained on MQAR
  (`--inputs trained`: peaked attention, where approximations err differently than on Gaussian
  noise); the error column is the figure here, since the tasks below cannot train the candidates;
- `task-retrieval.jsonl`: `retrieval_distance:distance=40` at seq 64, 1 layer, 800 steps (the budget
  of results/recall-tasks/retrieval-distance.jsonl);
- `task-mqar.jsonl`: `mqar:num_pairs=16:vocab=256` at seq 128, 2 layers, `--conv-kernel 4`, 2000 steps
  (the budget of results/recall-tasks/mqar-capacity-newer-variants.jsonl).

Both tasks train effattn's causal decoder. A candidate whose library has no causal form that passes
effattn's `causal_no_future_leak` check is not offered in causal mode (see below), and its task rows
are recorded as `unsupported` with that reason instead of being trained. `table DIR` prints time
ratios against `full` and `sliding_window` per length, the relative error, and the task accuracy next
to full/window references read from results/ (the same budgets).

Nothing else may run meanwhile: every variant of a length is timed in interleaved rounds in this
process, as `effattn bench` does in its measuring process. Because the sweep runs in-process, the
plugins are registered at run time with `effattn.registry.register_attention` (no package, no entry
point); there is no per-call timeout (`isolation="none"`).

The candidate plugins themselves (wrappers of the libraries' attention cores) are in
`candidate_plugins.py`, with what each computes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from candidate_plugins import CAUSAL, register, why_not

from effattn.store import read_results

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------- the runs
CANDIDATES = ["reformer_lsh", "routing", "sinkhorn"]
BASELINES = ["full", "sliding_window", "linear", "performer"]
FULL = {"fwd": [1024, 2048, 4096, 8192], "fwdbwd": [4096], "trained": [1024, 4096]}
QUICK = {"fwd": [256, 512], "fwdbwd": [256], "trained": [256]}
#: task variants at seq 64/128: small buckets (each candidate sees a handful of blocks, as window 8/16 does)
TASKS = {
    "retrieval": dict(
        task="retrieval_distance:distance=40",
        seq=64,
        steps=800,
        layers=1,
        conv_kernel=0,
        attn=["reformer_lsh:bucket_size=8", "routing:window_size=16", "sinkhorn:bucket_size=8"],
        ref=[(ROOT / "results/recall-tasks/retrieval-distance.jsonl", ["full", "sliding_window:window=8"])],
    ),
    "mqar": dict(
        task="mqar:num_pairs=16:vocab=256",
        seq=128,
        steps=2000,
        layers=2,
        conv_kernel=4,
        attn=["reformer_lsh:bucket_size=8", "routing:window_size=16", "sinkhorn:bucket_size=16"],
        ref=[
            (ROOT / "results/recall-tasks/mqar-capacity.jsonl", ["full", "linear"]),
            (ROOT / "results/recall-tasks/mqar-capacity-newer-variants.jsonl", ["sliding_window_sinks:window=16"]),
        ],
    ),
}
PARTS = ["sweep-fwd", "sweep-fwdbwd", "sweep-trained", "task-retrieval", "task-mqar"]


def _sweep(part: str, out: Path, quick: bool, min_run_time: float | None) -> None:
    from effattn.bench import SweepSpec, run_sweep
    from effattn.spec import parse_variants

    kind = part.split("-")[1]
    lens = (QUICK if quick else FULL)[kind]
    kw = {"min_run_time_s": min_run_time} if min_run_time else {}
    if kind == "trained":  # the error on peaked attention: q, k, v of a backbone trained on MQAR
        kw["inputs"] = "trained"
    mode = "fwdbwd" if kind == "fwdbwd" else "fwd"
    spec = SweepSpec(seq_lens=lens, variants=parse_variants(",".join(BASELINES + CANDIDATES)), mode=mode, **kw)
    print(f"$ sweep {mode} n={lens} -> {out}", flush=True)
    run_sweep(spec, str(out), resume=out.exists(), isolation="none")


def _task(part: str, out: Path, quick: bool) -> None:
    from effattn.bench.tasksweep import run_task_sweep, task_base_row
    from effattn.registry import get_entry
    from effattn.spec import parse_variant
    from effattn.store import ResultsFile
    from effattn.tasks import create_task
    from effattn.tasks.train import TrainSpec

    t = TASKS[part.split("-")[1]]
    tv = parse_variant(t["task"], validate=False)
    task = create_task(tv.name, **tv.options)
    spec = TrainSpec(steps=20 if quick else t["steps"], n_layers=t["layers"], conv_kernel=t["conv_kernel"], n_heads=4)
    variants = [parse_variant(a) for a in t["attn"]]
    ok = [v for v in variants if get_entry(v.name).facts.supports_causal]
    print(f"$ task {t['task']} n={t['seq']} steps={spec.steps} -> {out}", flush=True)
    if ok:
        run_task_sweep(task, ok, [t["seq"]], 1, spec, str(out), resume=out.exists(), log=print)
    skipped = [v for v in variants if v not in ok]
    if skipped:  # the task trains a causal decoder: recorded, not trained
        rf = ResultsFile(str(out), "resume" if out.exists() else "new").open()
        try:
            for v in skipped:
                row = task_base_row(task, v, t["seq"], 0, spec)
                reason = f"not offered in causal mode: {CAUSAL[v.name]}"
                rf.append({**row, "status": "unsupported", "reason": reason})
                print(f"    {v.label}: unsupported ({reason})")
        finally:
            rf.close()


def run(args) -> int:
    register()
    missing = {n: why_not(n) for n in CANDIDATES if why_not(n)}
    for n, why in missing.items():
        print(f"candidates: {n} {why}", file=sys.stderr)
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"candidates: --out-dir {out_dir} is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    for part in args.only or PARTS:
        out = out_dir / f"{part}.jsonl"
        if part.startswith("sweep"):
            _sweep(part, out, args.quick, args.min_run_time)
        else:
            _task(part, out, args.quick)
    return 0


# ----------------------------------------------------------------------------------- the table
def _rows(path: Path) -> list[dict]:
    """The results rows of a file (effattn's reader: torn or foreign lines are left out), or []."""
    try:
        return read_results(str(path))[0]
    except Exception:  # noqa: BLE001 - a foreign file holds no rows for the table
        return []


def table(args) -> int:
    d = Path(args.dir)
    if not d.is_dir():
        raise SystemExit(f"candidates: {d} is not a directory")
    if not any((d / f"{p}.jsonl").exists() for p in PARTS):
        raise SystemExit(f"candidates: {d} holds none of {', '.join(p + '.jsonl' for p in PARTS)}")
    if not any(_rows(d / f"{p}.jsonl") for p in PARTS):
        raise SystemExit(f"candidates: {d} holds no results rows (torn or foreign files?)")
    for part in ("sweep-fwd", "sweep-fwdbwd", "sweep-trained"):
        rows = {(r["label"], r["seq_len"]): r for r in _rows(d / f"{part}.jsonl")}  # the latest row per point
        if not rows:
            continue
        print(f"\n{part}")
        print("| variant | n | time ms | x full | x sliding_window | rel err vs full | peak MiB | peak fraction |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in sorted({n for _, n in rows}):
            f, w = rows.get(("full", n)), rows.get(("sliding_window", n))
            for lab in dict.fromkeys(lab for lab, m in rows if m == n):
                r = rows[(lab, n)]
                if r.get("status") != "ok":
                    print(f"| {lab} | {n} | {r.get('status', '?')}: {r.get('reason') or ''} | | | | | |")
                    continue
                rat = lambda ref, r=r: (
                    f"{r['time_ms'] / ref['time_ms']:.2f}" if ref and ref.get("status") == "ok" else "-"
                )
                num = lambda x, fmt: "-" if x is None else format(x, fmt)
                mem = r.get("peak_mem_bytes")
                mib = "-" if mem is None else f"{mem / 2**20:.0f}"
                print(
                    f"| {lab} | {n} | {r['time_ms']:.1f} | {rat(f)} | {rat(w)} | "
                    f"{num(r.get('rel_err_vs_full'), '.3f')} | {mib} | {num(r.get('peak_fraction'), '.0%')} |"
                )
    for name, t in TASKS.items():
        rows = _rows(d / f"task-{name}.jsonl")
        if not rows:
            continue
        refs = [
            {**r, "_src": path}
            for path, labels in t["ref"]
            for r in _rows(Path(path))
            if r.get("label") in labels and r.get("status") == "ok"
        ]
        print(f"\n{t['task']} at n={t['seq']}: test accuracy")
        for r in [*refs, *rows]:
            acc = r.get("test_accuracy")
            steps = (r.get("train_spec") or {}).get("steps")
            what = f"{acc:.3f}" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason')}"
            src = f"  ({Path(r['_src']).relative_to(ROOT)}, seed {r.get('seed')})" if "_src" in r else ""
            print(f"  {r['label']:<40} {what}  [{steps} steps]{src}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print its usage first)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None) -> int:
    p = _Parser(prog="candidates.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="measure (nothing else may run meanwhile)")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--quick", action="store_true", help="tiny sizes: n=256,512 (fwdbwd 256), 20 training steps")
    r.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], help=f"comma list of {','.join(PARTS)}")
    r.add_argument("--min-run-time", type=float, default=None, help="seconds per point (effattn's default 0.2)")
    t = sub.add_parser("table", help="print the comparison of a run directory")
    t.add_argument("dir")
    args = p.parse_args(argv)
    if args.cmd == "run":
        bad = [x for x in (args.only or []) if x not in PARTS]
        if args.only is not None and (bad or not args.only):
            p.error(f"--only: unknown part {', '.join(bad) or '(empty)'}; choose from {', '.join(PARTS)}")
        if args.min_run_time is not None and not (math.isfinite(args.min_run_time) and args.min_run_time > 0):
            p.error(f"--min-run-time must be a finite number > 0, got {args.min_run_time}")
        return run(args)
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
