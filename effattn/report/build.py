"""`build_report`: result files -> report.md / report.html and its pictures.

The report is built from the data alone (effattn.results.load), so it renders for any sweep,
partial or failed: missing points are blank, a variant that never ran shows its status, a single
length gets tables without slopes.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from ..results import label_series, latest, load, measured, summary
from .decision import decision_grids, draw_decision_maps
from .html import to_html
from .patterns import pattern_pictures
from .plots import label_styles, make_plots
from .tables import cell, fmt, pivot, table_md
from .tasks import task_report


def build_report(paths: list[str], out_dir: str, formats=("md",), on_problem=None) -> list[str]:
    """Write report.md (and report.html) with its pictures into `out_dir`; the files written."""
    every = latest(measured(load(*paths, on_problem=on_problem), paths, on_problem))
    os.makedirs(out_dir, exist_ok=True)
    is_task = every["kind"].eq("task") if "kind" in every else pd.Series(False, index=every.index)
    df = label_series(every[~is_task])
    if df.empty:
        if is_task.any():  # training runs only (`bench --task`): a report of their own
            body = task_report(every[is_task], paths, out_dir)
        else:
            body = "# effattn report\n\nNo points in " + ", ".join(paths) + ".\n"
        written = _write_formats(out_dir, body, formats)
        return written + [
            os.path.join(out_dir, f) for f in ("accuracy.png",) if os.path.exists(os.path.join(out_dir, f))
        ]
    df = mark_recompute(df)
    plots = make_plots(df, out_dir)
    maps = decision_grids(df)
    map_files = draw_decision_maps(maps, out_dir, label_styles(df))
    md = _header(df, paths) + _decision_section(map_files)
    md += [PLOT_MARK + p for p in PLOT_ORDER if p in plots]
    md += _tables(df) + exactness_table(df) + _scaling(summary(df))
    md += _patterns(pattern_pictures(df, out_dir)) + _context(df)
    if is_task.any():
        md += ["", task_report(every[is_task], paths, out_dir, heading="##")]
    interactive = None
    if "html" in formats:
        from .interactive import interactive_plots

        interactive = interactive_plots(df, maps)
    written = _write_formats(out_dir, md, formats, interactive)
    pictures = [f"{p}.png" for p in plots] + [f for f, _ in map_files]
    return written + [os.path.join(out_dir, f) for f in pictures]


#: a line of the report's outline that stands for a plot: an image in report.md, the interactive
#: plot (where there is one) in report.html
PLOT_MARK = "@@plot:"


def _decision_section(map_files) -> list[str]:
    if not map_files:
        return []
    md = [
        "## Which variant, at which length",
        "",
        "The fastest variant that fits, at each length (x) against a memory budget (inputs plus peak; left) "
        "or an error tolerance against `full` (right; where the rows carry errors). Past the dashed line the "
        "figures are extrapolated from the measured lengths (hatched): measure there before relying on it. "
        "`effattn advise RESULTS --seq-len N` answers for one point, with the reasons the others are out.",
        "",
    ]
    return md + [f"{PLOT_MARK}{os.path.splitext(f)[0]}" for f, _ in map_files]


#: the plots in the order the report shows them
PLOT_ORDER = ("time", "memory", "cache", "speedup", "bandwidth", "peak_fraction", "error", "pareto")


def _header(df: pd.DataFrame, paths) -> list[str]:
    lens = ", ".join(map(str, sorted(df["seq_len"].unique())))
    counts = df["status"].value_counts().to_dict()
    return [
        "# effattn report",
        "",
        f"Source: {', '.join(paths)}. {len(df)} points, {df['label'].nunique()} variants, lengths {lens}.",
        "",
        "Status of the points: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".",
        "",
    ]


def _tables(df: pd.DataFrame) -> list[str]:
    """Time, memory, a decode sweep's cache, prefill and bandwidth, throughput, error vs full."""
    md = [table_md(pivot(df, "time_ms"), "Time", "ms")]
    if df["label"].str.endswith(RECOMPUTE_MARK).any():
        md += [f"*{RECOMPUTE_MARK.strip()}*: {RECOMPUTE_NOTE}.", ""]
    md.append(table_md(pivot(df, "peak_mem_bytes"), "Peak memory", "MiB", scale=1 / 2**20))
    if "cache_bytes" in df and pd.to_numeric(df["cache_bytes"], errors="coerce").notna().any():
        md.append(table_md(pivot(df, "cache_bytes"), "Decoding cache at context n", "MiB", scale=1 / 2**20))
        if "prefill_ms" in df:
            md.append(table_md(pivot(df, "prefill_ms"), "Prefill of the n-token context", "ms"))
        if "bandwidth_fraction" in df and df["bandwidth_fraction"].notna().any():
            why = "fraction of the memory bandwidth measured in the same group; above 1: the cache sat in CPU caches"
            md.append(table_md(pivot(df, "bandwidth_fraction"), "Bandwidth a step reaches", why, lower_is_better=False))
    if df["gflops"].notna().any():
        md.append(table_md(pivot(df, "gflops"), "Useful throughput", "GFLOP/s", lower_is_better=False))
    if pd.to_numeric(df["rel_err_vs_full"], errors="coerce").notna().any():
        why = "‖out−ref‖/‖ref‖; large for a local pattern by design: it measures the approximation, not a bug"
        md.append(table_md(pivot(df, "rel_err_vs_full"), "How far from full attention (relative error against `full`)",
                           why))  # fmt: skip
    return md


def _scaling(summ: pd.DataFrame) -> list[str]:
    md = [
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
        te = "" if pd.isna(r["time_exponent"]) else f"{r['time_exponent']:.2f}"
        if te and not pd.isna(r["time_exponent_lo"]):
            te += f" [{r['time_exponent_lo']:.2f}, {r['time_exponent_hi']:.2f}]"
        me = "" if pd.isna(r["mem_exponent"]) else f"{r['mem_exponent']:.2f}"
        loaded = f", {r['loaded']} measured under load" if r.get("loaded") else ""
        md.append(
            f"| {cell(r['label'])} | {te} | {me} | {fmt(r['fit_from'])} | {cell(r['crossover'])} "
            f"| {r['points']}{loaded} |"
        )
    return md + [""]


def _patterns(pats) -> list[str]:
    if not pats:
        return []
    md = ["### Attention patterns (dense_mask at n = 128, small options)", "",
          "| variant | pattern | what it computes |", "| --- | --- | --- |"]  # fmt: skip
    return md + [f"| {cell(label)} | ![]({f}) | {cell(formula)} |" for label, f, formula in pats] + [""]


def _context(df: pd.DataFrame) -> list[str]:
    """Each run's machine and spec; then the points to read with care: noisy, loaded, faults, and
    those that did not run."""
    flag = lambda col: df[df.get(col, pd.Series(False, index=df.index)).fillna(False).astype(bool)]
    noisy, loaded = flag("noisy"), flag("loaded")
    md = ["### Context", ""] + [
        f"- run `{run_id}`: " + _run_context(g) for run_id, g in df.groupby("run_id", sort=False)
    ]
    if len(noisy):
        md += ["", f"Noisy points (IQR/median > 10%), {len(noisy)} of {len(df)}:", *_points_by_variant(noisy)]
    if len(loaded):
        why = sorted({w for ws in loaded.get("load_reasons", []) if isinstance(ws, list) for w in ws})
        md += [
            "",
            f"**Points measured while the machine was busy**, {len(loaded)} of {len(df)} (their times, exponents "
            "and crossovers are less certain" + (f"; {'; '.join(why[:4])}" if why else "; too few quiet rounds") + "):",
            *_points_by_variant(loaded),
        ]
    faults = measurement_faults(df)
    if len(faults):
        md += ["", "Measurement faults (these points claim more than the machine can do; do not trust them):"]
        md += [f"- {label} n={n}: {why}" for label, n, why in faults]
    failed = df[df["status"].isin(["error", "oom", "timeout", "unsupported"])]
    if len(failed):
        md += ["", "Points that did not run:"]
        md += [f"- {r['label']} n={r['seq_len']}: {r['status']} ({r['reason']})" for _, r in failed.iterrows()]
    return md


def _write_formats(out_dir: str, body, formats, interactive: dict | None = None) -> list[str]:
    """report.md (plots as images) and report.html (plots interactive where `interactive` has
    them, keyed by plot name; a decision map's key is map_<i>_<axis>). `body`: the text, or its
    lines with PLOT_MARK lines standing for plots."""
    lines = body.splitlines() if isinstance(body, str) else body
    written = []
    if "md" in formats:
        md = [f"![{line[len(PLOT_MARK):]}]({line[len(PLOT_MARK):]}.png)\n" if line.startswith(PLOT_MARK) else line
              for line in lines]  # fmt: skip
        written.append(_write(out_dir, "report.md", "\n".join(md) + "\n"))
    if "html" in formats:
        plots, html_lines = {}, []
        for line in lines:
            if not line.startswith(PLOT_MARK):
                html_lines.append(line)
                continue
            name = line[len(PLOT_MARK) :]
            divs = _interactive_for(name, interactive or {})
            if divs:
                key = f"PLOTSLOT{len(plots)}"
                plots[key] = "\n".join(divs)
                html_lines += ["", key, ""]
            else:
                html_lines.append(f"![{name}]({name}.png)\n")
        written.append(_write(out_dir, "report.html", to_html("\n".join(html_lines) + "\n", plots)))
    return written


def _interactive_for(name: str, interactive: dict) -> list[str]:
    """The interactive divs that replace the static plot `name`."""
    if name.startswith("decision_map"):
        k = name.rpartition("_")[2] if name != "decision_map" else "0"
        return [v for key, v in interactive.items() if key.startswith(f"map_{k}_")]
    return [interactive[name]] if name in interactive else []


RECOMPUTE_MARK = " (recomputes)"
RECOMPUTE_NOTE = (
    "the variant has no decoding cache of its own: each step recomputes attention over the whole context, "
    "so its step time grows with n whatever its pattern"
)


def mark_recompute(df: pd.DataFrame) -> pd.DataFrame:
    """Decoding rows of a variant that decodes by recomputing attention over its whole context
    (no cache of its own) carry it in their label, in every table and plot."""
    if "decode_backend" not in df or not df["decode_backend"].eq("recompute").any():
        return df
    df = df.copy()
    marked = df["decode_backend"].eq("recompute") & ~df["label"].str.endswith(RECOMPUTE_MARK)
    df.loc[marked, "label"] = df.loc[marked, "label"] + RECOMPUTE_MARK
    return df


def exactness_table(df: pd.DataFrame) -> list[str]:
    """The exact variants' own-pattern error per length, flagged where it is beyond its dtype's
    rounding (such a point is an error), or why it was not checked."""
    if "exact" not in df:
        return []
    rows = df[df["exact"].fillna(False).astype(bool)]
    err = pd.to_numeric(rows.get("rel_err_vs_own_dense"), errors="coerce")
    if rows.empty or not (err.notna().any() or rows.get("exact_check", pd.Series(dtype=object)).notna().any()):
        return []
    lens = sorted(rows["seq_len"].unique())
    out = [
        "### Correctness of exact variants (relative error against float64 attention over the variant's own pattern)",
        "",
        "‖out−ref‖/‖ref‖ of the swept configuration; **✗** marks an error beyond the dtype's rounding "
        "(the point is an error; its reason lists every failed comparison: padding, the other masking, "
        "determinism, gradients); *not checked* says why no comparison was made.",
        "",
        "| variant | " + " | ".join(f"n={n}" for n in lens) + " |",
        "| --- |" + " ---: |" * len(lens),
    ]
    for label, g in rows.groupby("label", sort=False):
        cells = []
        for n in lens:
            r = g[g["seq_len"] == n]
            if r.empty:
                cells.append("")
                continue
            r = r.iloc[-1]
            e, tol = r.get("rel_err_vs_own_dense"), r.get("exact_tolerance")
            check = r.get("exact_check")
            if isinstance(e, (int, float)) and e == e:
                bad = isinstance(tol, (int, float)) and tol == tol and e > tol
                failed = r["status"] == "error" and isinstance(r.get("reason"), str) and "not exact" in r["reason"]
                cells.append(f"**{e:.1e} ✗**" if bad or failed else f"{e:.1e}")
            elif isinstance(check, str) and check.startswith(("not computed", "not completed", "not checked")):
                cells.append("*not checked*")
            else:
                cells.append(r["status"] if r["status"] != "ok" else "")
        out.append(f"| {cell(label)} | " + " | ".join(cells) + " |")
    notes = sorted(
        {
            c
            for c in rows.get("exact_check", pd.Series(dtype=object))
            if isinstance(c, str) and c.startswith(("not computed", "not completed", "not checked"))
        }
    )
    out += [""] + [f"- not checked: {cell(c)}" for c in notes[:5]] + [""]
    return out


def _points_by_variant(rows: pd.DataFrame) -> list[str]:
    """`- label: n = 256, 1024` lines, one per variant."""
    return [
        f"- {cell(label)}: n = " + ", ".join(str(int(n)) for n in g["seq_len"])
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
            return f"{fmt(min(vals))}–{fmt(max(vals))}{unit}"
        return ", ".join(fmt(v) if isinstance(v, float) else str(v) for v in vals) + unit

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
