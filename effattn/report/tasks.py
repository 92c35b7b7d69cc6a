"""The report of training runs (`bench --task`): accuracy, loss and time per variant, length and
seed, with an accuracy plot."""

from __future__ import annotations

import pandas as pd

from .plots import accuracy_plot
from .tables import cell


def task_report(tasks: pd.DataFrame, paths, out_dir: str, heading: str = "#") -> str:
    """Training runs (`bench --task`): accuracy, loss and time per variant, length and seed."""
    md = [f"{heading} effattn report: training runs" if heading == "#" else f"{heading} Training runs", ""]
    if heading == "#":
        md += [f"Source: {', '.join(paths)}. {len(tasks)} runs.", ""]
    groups = tasks.groupby(
        [tasks["task"].astype(str), tasks["task_options"].astype(str), tasks["train_spec"].astype(str)], sort=False
    )
    for k, ((task, _, _), g) in enumerate(groups):
        ok = g[g["status"] == "ok"]
        first = g.iloc[0]
        opts = first["task_options"] if isinstance(first["task_options"], dict) else {}
        train = first["train_spec"] if isinstance(first.get("train_spec"), dict) else {}
        md += [
            f"{heading}# {task}"
            + (f" ({', '.join(f'{k}={v}' for k, v in opts.items())})" if opts else "")
            + (f" ({k + 1} of {len(groups)} in the plot)" if len(groups) > 1 else ""),
            "",
            "Training: " + ", ".join(f"{k} {v}" for k, v in train.items()) + "." if train else "",
            "",
            "| variant | n | seeds | test accuracy (mean) | per seed | final loss | train time (s) |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for (label, n), h in ok.groupby(["label", "seq_len"], sort=False):
            acc = pd.to_numeric(h["test_accuracy"], errors="coerce")
            md.append(
                f"| {cell(label)} | {int(n)} | {len(h)} | {acc.mean():.3f} | "
                + ", ".join(f"{a:.3f} (seed {int(s)})" for a, s in zip(acc, h["seed"]))
                + f" | {pd.to_numeric(h['final_loss'], errors='coerce').mean():.3f} | "
                f"{pd.to_numeric(h['train_time_s'], errors='coerce').mean():.0f} |"
            )
        failed = g[g["status"] != "ok"]
        if len(failed):
            md += ["", "Runs that did not finish:"] + [
                f"- {r['label']} n={r['seq_len']} seed={r['seed']}: {r['status']} ({r['reason']})"
                for _, r in failed.iterrows()
            ]
        md.append("")
    if accuracy_plot(tasks, out_dir):
        md += ["![accuracy](accuracy.png)", ""]
    return "\n".join(md)
