"""`build_report`: result files -> report.md / report.html and its pictures.

The report is built from the data alone (effattn.results.load), so it renders for any sweep,
partial or failed: missing points are blank, a variant that never ran shows its status, a single
length gets tables without slopes.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from ..results import label_series, latest, load, summary
from .html import to_html
from .patterns import pattern_pictures
from .plots import make_plots
from .tables import _cell, _fmt, pivot, table_md


def build_report(paths: list[str], out_dir: str, formats=("md",), on_problem=None) -> list[str]:
    df = label_series(latest(load(*paths, on_problem=on_problem)))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    if df.empty:
        body = "# effattn report\n\nNo points in " + ", ".join(paths) + ".\n"
        written.append(_write(out_dir, "report.md", body))
        return written
    plots = make_plots(df, out_dir)
    pats = pattern_pictures(df, out_dir)
    summ = summary(df)
    md = [
        "# effattn report",
        "",
        f"Source: {', '.join(paths)}. {len(df)} points, "
        f"{df['label'].nunique()} variants, lengths {', '.join(map(str, sorted(df['seq_len'].unique())))}.",
        "",
    ]
    counts = df["status"].value_counts().to_dict()
    md.append("Status of the points: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".")
    md.append("")
    for p in ("time", "memory", "cache", "speedup", "bandwidth", "peak_fraction", "error", "pareto"):
        if p in plots:
            md += [f"![{p}]({p}.png)", ""]
    md.append(table_md(pivot(df, "time_ms"), "Time", "ms"))
    md.append(table_md(pivot(df, "peak_mem_bytes"), "Peak memory", "MiB", scale=1 / 2**20))
    if "cache_bytes" in df and pd.to_numeric(df["cache_bytes"], errors="coerce").notna().any():
        md.append(table_md(pivot(df, "cache_bytes"), "Decoding cache at context n", "MiB", scale=1 / 2**20))
        if "prefill_ms" in df:
            md.append(table_md(pivot(df, "prefill_ms"), "Prefill of the n-token context", "ms"))
        if "bandwidth_fraction" in df and df["bandwidth_fraction"].notna().any():
            md.append(
                table_md(
                    pivot(df, "bandwidth_fraction"),
                    "Bandwidth a step reaches",
                    "fraction of the memory bandwidth measured in the same group; above 1: the cache sat in CPU caches",
                    lower_is_better=False,
                )
            )
    if df["gflops"].notna().any():
        md.append(table_md(pivot(df, "gflops"), "Useful throughput", "GFLOP/s", lower_is_better=False))
    if pd.to_numeric(df["rel_err_vs_full"], errors="coerce").notna().any():
        md.append(
            table_md(
                pivot(df, "rel_err_vs_full"),
                "How far from full attention (relative error against `full`)",
                "‖out−ref‖/‖ref‖; large for a local pattern by design: it measures the approximation, not a bug",
            )
        )
    if "rel_err_vs_own_dense" in df and pd.to_numeric(df["rel_err_vs_own_dense"], errors="coerce").notna().any():
        exact_rows = df[df["exact"].fillna(False).astype(bool)] if "exact" in df else df
        md.append(
            table_md(
                pivot(exact_rows, "rel_err_vs_own_dense"),
                "Correctness of exact variants (relative error against "
                "float64 attention over the variant's own pattern)",
                "‖out−ref‖/‖ref‖; about 1e-7 when correct",
            )
        )
    md += [
        "### Scaling (least-squares fit of log time and log memory against log n)",
        "",
        "Time exponents are fitted to times scaled by each length's reference rate (the matmul timed in the "
        "same rounds), with a 95% interval (a bootstrap over the rounds: how far the exponent could move if "
        'the sweep were measured again). "Faster than full from" is decided per length by the 95% interval '
        "of the round-by-round ratio to full (of the two points' own intervals for rows without rounds); "
        "where the data cannot place the crossover it is given as a range.",
        "",
        "| variant | time exponent [95%] | memory exponent | fitted from n | faster than full from n | points |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for _, r in summ.iterrows():
        te = (
            ""
            if pd.isna(r["time_exponent"])
            else f"{r['time_exponent']:.2f}"
            + ("" if pd.isna(r["time_exponent_lo"]) else f" [{r['time_exponent_lo']:.2f}, {r['time_exponent_hi']:.2f}]")
        )
        me = "" if pd.isna(r["mem_exponent"]) else f"{r['mem_exponent']:.2f}"
        loaded = f", {r['loaded']} measured under load" if r.get("loaded") else ""
        md.append(
            f"| {_cell(r['label'])} | {te} | {me} | {_fmt(r['fit_from'])} | {_cell(r['crossover'])} "
            f"| {r['points']}{loaded} |"
        )
    md.append("")
    if pats:
        md += [
            "### Attention patterns (dense_mask at n = 128, small options)",
            "",
            "| variant | pattern | what it computes |",
            "| --- | --- | --- |",
        ]
        md += [f"| {_cell(label)} | ![]({f}) | {_cell(formula)} |" for label, f, formula in pats]
        md.append("")
    noisy = df[df.get("noisy", pd.Series(False, index=df.index)).fillna(False).astype(bool)]
    loaded = df[df.get("loaded", pd.Series(False, index=df.index)).fillna(False).astype(bool)]
    md += ["### Context", ""]
    for run_id, g in df.groupby("run_id", sort=False):
        md.append(f"- run `{run_id}`: " + _run_context(g))
    if len(noisy):
        md += ["", f"Noisy points (IQR/median > 10%), {len(noisy)} of {len(df)}:", *_points_by_variant(noisy)]
    if len(loaded):
        md += [
            "",
            f"Points measured while the machine was busy (too few quiet rounds: their times are less "
            f"certain), {len(loaded)} of {len(df)}:",
            *_points_by_variant(loaded),
        ]
    faults = measurement_faults(df)
    if len(faults):
        md += ["", "Measurement faults (these points claim more than the machine can do; do not trust them):"] + [
            f"- {label} n={n}: {why}" for label, n, why in faults
        ]
    failed = df[df["status"].isin(["error", "oom", "timeout", "unsupported"])]
    if len(failed):
        md += ["", "Points that did not run:"] + [
            f"- {r['label']} n={r['seq_len']}: {r['status']} ({r['reason']})" for _, r in failed.iterrows()
        ]
    body = "\n".join(md) + "\n"
    if "md" in formats:
        written.append(_write(out_dir, "report.md", body))
    if "html" in formats:
        written.append(_write(out_dir, "report.html", to_html(body)))
    written += [os.path.join(out_dir, f"{p}.png") for p in plots]
    return written


def _points_by_variant(rows: pd.DataFrame) -> list[str]:
    """`- label: n = 256, 1024` lines, one per variant."""
    return [
        f"- {_cell(label)}: n = " + ", ".join(str(int(n)) for n in g["seq_len"])
        for label, g in rows.groupby("label", sort=False)
    ]


def measurement_faults(df: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(label, n, why) for every row that claims more than the machine can do: flagged when it was
    measured, or - for files written before rows carried the flag - a useful FLOP rate above the
    matmul peak of its own row."""
    out = []
    frac = pd.to_numeric(df.get("peak_fraction", pd.Series(dtype=float)), errors="coerce")
    for i, r in df.iterrows():
        why = r.get("fault")
        if not isinstance(why, str) and frac.get(i, 0) > 1:
            why = (
                f"useful FLOP rate {r['gflops']:.1f} GFLOP/s is {frac[i]:.0%} of the matmul peak of its run "
                "(a FLOP count or time that cannot be right)"
            )
        if isinstance(why, str):
            out.append((r["label"], int(r["seq_len"]), why))
    return out


def _run_context(g: pd.DataFrame) -> str:
    """One run's machine and spec. A run spread over Ray workers can differ per row (hosts,
    threads, each worker's own matmul peak): every distinct value is shown, numbers as a range."""
    envs = [e for e in g.get("env", pd.Series(dtype=object)) if isinstance(e, dict)] or [{}]

    def distinct(values, unit=""):
        vals = sorted({v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}, key=str)
        if not vals:
            return "?"
        if len(vals) > 1 and all(isinstance(v, (int, float)) for v in vals):
            return f"{_fmt(min(vals))}–{_fmt(max(vals))}{unit}"
        return ", ".join(_fmt(v) if isinstance(v, float) else str(v) for v in vals) + unit

    first = g.iloc[0]
    text = (
        f"{distinct(e.get('cpu') for e in envs)}, {distinct(e.get('threads') for e in envs)} threads, torch "
        f"{distinct(e.get('torch') for e in envs)}, device {first['device']}, {first['dtype']}, mode "
        f"{first['mode']}, level {first['level']}, batch {first['batch']}, heads {first['heads']}, head_dim "
        f"{first['head_dim']}, commit {distinct(e.get('git_commit') for e in envs)}, matmul peak "
        f"{distinct(g.get('matmul_peak_gflops', pd.Series(dtype=float)), ' GFLOP/s')}"
    )
    workers = [w for w in g.get("worker", pd.Series(dtype=object)) if isinstance(w, dict)]
    if workers:
        hosts = {w.get("host") for w in workers}
        text += (
            f"; on Ray: {len({(w.get('host'), w.get('pid')) for w in workers})} worker processes on "
            f"{len({w.get('ray_node_id') for w in workers})} node(s) ({', '.join(sorted(map(str, hosts)))})"
        )
    return text


def _write(out_dir, name, text):
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path
