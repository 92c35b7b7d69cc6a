"""LRA ListOps ordering at CPU scale (Tay et al. 2021, Table 1: Transformer 36.37, Linear 16.13,
Performer 18.01; chance 10%, the majority class about 17%).

Does full attention clear the majority class while the linear family stays below it, with a
training budget that fits this machine? Trains `full`, `linear` and `performer` on effattn's
ListOps (`effattn bench --task listops`, one results file) and prints each accuracy beside the
majority-class rate of the task's own label distribution (estimated from 20,000 fresh examples).

    python benchmarks/reproduce_listops.py [--steps 3000] [--seq-len 256]
        [--out results/reproductions/listops-lra.jsonl]
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def majority_rate(max_depth: int, max_args: int, seq_len: int, n: int = 20000) -> tuple[int, float]:
    import torch

    from effattn.tasks import create_task

    task = create_task("listops", max_depth=max_depth, max_args=max_args)
    _, labels, _ = task.batch(n, seq_len, torch.Generator().manual_seed(12345))
    counts = torch.bincount(labels, minlength=10)
    top = int(counts.argmax())
    return top, float(counts[top]) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/reproductions/listops-lra.jsonl")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-depth", type=int, default=6)
    ap.add_argument("--max-args", type=int, default=5)
    ap.add_argument("--attn", default="full,linear,performer")
    ap.add_argument("--seeds", type=int, default=1)
    a = ap.parse_args(argv)
    task = f"listops:max_depth={a.max_depth}:max_args={a.max_args}"
    cmd = [sys.executable, "-m", "effattn.cli", "bench", "--task", task, "--attn", a.attn, "--seq-lens",
           str(a.seq_len), "--steps", str(a.steps), "--seeds", str(a.seeds), "--out", a.out, "--resume"]  # fmt: skip
    print(" ".join(cmd[2:]), flush=True)
    r = subprocess.run(cmd)
    if r.returncode:
        sys.exit(r.returncode)
    top, rate = majority_rate(a.max_depth, a.max_args, a.seq_len)
    from effattn.results import load

    df = load(a.out)
    df = df[(df.get("kind") == "task") & (df["status"] == "ok")]
    print(f"\nmajority class {top}: {rate:.3f} of 20,000 fresh examples (chance 0.100)")
    for label, g in df.groupby("label", sort=False):
        accs = ", ".join(f"{x:.3f}" for x in g["test_accuracy"])
        mins = g["train_time_s"].sum() / 60
        verdict = "above" if g["test_accuracy"].mean() > rate else "not above"
        print(f"{label:12s} accuracy {accs}  ({verdict} the majority class; {mins:.1f} min of training)")


if __name__ == "__main__":
    main()
