"""Zoology's Figure 2 at CPU scale (Arora et al. 2023): MQAR accuracy against model width.

Their finding: attention solves multi-query associative recall at every width, while gated
convolutions and linear attention need a width that grows with the sequence length (the number of
key-value pairs to hold). Their grid: vocabulary 8192, (sequence, pairs) in {(64, 4), (128, 8),
(256, 16)}, d_model 64-512, 2 layers, learning rates over logspace(-4, -2).

Here: the `mqar-zoology` preset (vocabulary 128, 2 layers, 4 heads, one learning rate 3e-3, 2500
steps, 2 seeds) at (64, 4) and (128, 8), d_model in {16, 32, 64}, with `full`, `linear` and
`performer` with 64 features (with its default 256, one run took 7 minutes). Every run is one
`effattn bench --preset` call appending to one results file (`--resume`: a run already there is not
repeated). Calibration: with 1000-1500 steps even `full` had not passed its induction-head
transition at d_model 16-32 (accuracy 0.12-0.29); at 3000 steps it reached 0.88 at d_model 32.

    python benchmarks/reproduce_zoology.py [--out results/reproductions/mqar-zoology.jsonl] [--steps 2500]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CONFIGS = ((64, 4), (128, 8))
WIDTHS = (16, 32, 64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/reproductions/mqar-zoology.jsonl")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    ap.add_argument("--plot", default=None, help="write the accuracy-against-width plot here (.png)")
    a = ap.parse_args(argv)
    widths = [int(w) for w in a.widths.split(",")]
    for seq, pairs in CONFIGS:
        for w in widths:
            cmd = [sys.executable, "-m", "effattn.cli", "bench", "--preset", "mqar-zoology",
                   "--task", f"mqar:num_pairs={pairs}:vocab=128", "--seq-lens", str(seq), "--d-model", str(w),
                   "--steps", str(a.steps), "--out", a.out, "--resume"]  # fmt: skip
            print(" ".join(cmd[2:]), flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"failed ({r.returncode}): {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    summarize(a.out, a.plot)


def summarize(path: str, plot: str | None = None):
    import pandas as pd

    from effattn.results import load

    df = load(path)
    df = df[(df.get("kind") == "task") & (df["status"] == "ok")].copy()
    df["d_model"] = df["train_spec"].map(lambda s: s["d_model"])
    df["pairs"] = df["task_options"].map(lambda o: o["num_pairs"])
    t = df.groupby(["seq_len", "pairs", "label", "d_model"])["test_accuracy"].agg(["mean", "min", "max", "count"])
    pd.set_option("display.width", 200)
    print(t.round(3).to_string())
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        groups = sorted(df.groupby(["seq_len", "pairs"]).groups)
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), sharey=True, squeeze=False)
        for ax, (seq, pairs) in zip(axes[0], groups):
            part = t.loc[(seq, pairs)]
            for label in part.index.get_level_values(0).unique():
                g = part.loc[label]
                ax.errorbar(g.index, g["mean"], yerr=[g["mean"] - g["min"], g["max"] - g["mean"]], marker="o",
                            capsize=3, label=label)  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xlabel("d_model")
            ax.set_title(f"seq {seq}, {pairs} pairs")
            ax.grid(True, alpha=0.3)
        axes[0][0].set_ylabel("MQAR test accuracy (mean, min-max over seeds)")
        axes[0][-1].legend(fontsize=8)
        fig.savefig(plot, dpi=110, bbox_inches="tight")
    return t


if __name__ == "__main__":
    main()
