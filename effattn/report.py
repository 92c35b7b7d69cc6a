"""`effattn report` and `effattn compare`: result files -> a report people read at a glance.

The report is built from the data alone (effattn.results.load), so it renders for any sweep,
partial or failed: missing points are blank, a variant that never ran shows its status, a single
length gets tables without slopes.
"""
from __future__ import annotations

import math
import numbers
import os
import sys

import click
import numpy as np
import pandas as pd

from .cli import cli, fail
from .results import label_series, latest, load, summary

#: options capped when drawing a pattern at n = 128 (the defaults would cover the whole picture)
PATTERN_CAPS = {"window": 8, "block_size": 8, "stride": 8, "global_tokens": 2}
STATUS_MARKERS = {"oom": "X", "timeout": "v", "error": "s", "unsupported": "d"}


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}"


def pivot(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """label x seq_len; cells hold the value for ok points and the status otherwise."""
    rows = {}
    for (label, n), g in df.groupby(["label", "seq_len"], sort=False):
        r = g.iloc[-1]
        rows.setdefault(label, {})[n] = r[col] if r["status"] == "ok" else r["status"]
    t = pd.DataFrame(rows).T
    return t.reindex(sorted(t.columns), axis=1) if len(t.columns) else t


def _best(t: pd.DataFrame, lower_is_better=True):
    """Per column, the label of the best numeric value (marked in tables)."""
    best = {}
    for c in t.columns:
        vals = pd.to_numeric(t[c], errors="coerce").dropna()
        if len(vals):
            best[c] = vals.idxmin() if lower_is_better else vals.idxmax()
    return best


def table_md(t: pd.DataFrame, title: str, unit: str, lower_is_better=True, scale=1.0) -> str:
    if t.empty:
        return f"### {title}\n\n(no points)\n"
    best = _best(t, lower_is_better)
    head = "| variant | " + " | ".join(f"n={c}" for c in t.columns) + " |"
    lines = [f"### {title} ({unit}; **bold** = best in column)", "", head, "|" + " --- |" * (len(t.columns) + 1)]
    for label, row in t.iterrows():
        cells = []
        for c in t.columns:
            v = row[c]
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and not pd.isna(v):  # NumPy ints too
                s = _fmt(v * scale)
                cells.append(f"**{s}**" if best.get(c) == label else s)
            else:
                cells.append("" if pd.isna(v) else str(v))
        lines.append(f"| {_cell(label)} | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _style(i: int) -> dict:
    """The i-th series' colour and marker: the 10 strong colours, then their 10 light shades, each
    with another marker: no two of 100 series look alike, and the first 20 differ in colour."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors  # (strong, light) pairs
    colour = tab20[2 * (i % 10) + (i // 10) % 2]
    return {"color": colour, "marker": MARKERS[(i + i // 10) % 10]}


def _flagged(g: pd.DataFrame) -> pd.Series:
    """Points measured while noisy or loaded: drawn hollow."""
    out = pd.Series(False, index=g.index)
    for c in ("noisy", "loaded"):
        if c in g:
            out |= g[c].fillna(False).astype(bool)
    return out


def _plot_lines(ax, df, col, scale=1.0, styles=None):
    for i, (label, g) in enumerate(df.groupby("label", sort=False)):
        st = (styles or {}).get(label) or _style(i)
        g = g.sort_values("seq_len")
        ok = g[g["status"] == "ok"]
        (line,) = ax.plot(ok["seq_len"], ok[col] * scale, ms=4, lw=1.2, label=label, **st)
        hollow = ok[_flagged(ok)]
        if len(hollow):  # noisy or loaded: a white-filled marker over the line's
            ax.plot(hollow["seq_len"], hollow[col] * scale, linestyle="none", marker=st["marker"], ms=4,
                    markerfacecolor="white", markeredgecolor=st["color"])
        bad = g[g["status"].isin(STATUS_MARKERS)]
        for _, r in bad.iterrows():  # failures sit at the top edge, in the line's colour
            ax.annotate(STATUS_MARKERS[r["status"]], (r["seq_len"], 1.0), xycoords=("data", "axes fraction"),
                        color=line.get_color(), ha="center", va="top", fontsize=9)


def _split_exact(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) for the exact variants and the approximate ones, each where there are any."""
    exact = df["exact"].fillna(False).astype(bool) if "exact" in df else pd.Series(True, index=df.index)
    parts = [("exact variants", df[exact]), ("approximate variants", df[~exact])]
    return [(t, d) for t, d in parts if len(d)]


def _ref_slopes(ax, df, col, scale):
    ok = df[(df["status"] == "ok") & df[col].notna()]
    if ok["seq_len"].nunique() < 2:
        return
    n0, n1 = ok["seq_len"].min(), ok["seq_len"].max()
    y0 = ok[ok["seq_len"] == n0][col].median() * scale
    xs = np.array([n0, n1], float)
    ax.plot(xs, y0 * (xs / n0), "k--", lw=0.8, alpha=0.6, label="∝ n")
    ax.plot(xs, y0 * (xs / n0) ** 2, "k:", lw=0.8, alpha=0.6, label="∝ n²")


def _speedups(df: pd.DataFrame, baseline: str = "full") -> pd.DataFrame:
    """Per variant and length: full's time over the variant's (the round-by-round paired ratio
    where they were timed together, else the ratio of medians), its 95% interval where known, and
    the length from which the summary resolves the variant as faster."""
    from .results import paired_ratio, summary

    ok = df[df["status"] == "ok"]

    def config(label: str) -> str:  # "sliding_window [mode=fwd]" -> " [mode=fwd]" (see results.label_series)
        return label[label.index(" ["):] if " [" in label else ""

    base = {(config(r["label"]), int(r["seq_len"])): r for r in ok.to_dict("records")
            if r["label"] == baseline + config(r["label"])}
    if not base:
        return pd.DataFrame()
    cross = {}
    try:
        summ = summary(df, baseline=baseline)
        col = f"faster_than_{baseline}_from"
        cross = dict(zip(summ["label"], summ[col])) if col in summ else {}
    except Exception:  # noqa: BLE001 - the plot goes on without the crossover marks
        pass
    out = []
    for r in ok.to_dict("records"):
        n, key = int(r["seq_len"]), (config(r["label"]), int(r["seq_len"]))
        if r["label"] == baseline + key[0] or key not in base:
            continue
        b = base[key]
        pr = paired_ratio(r, b)
        if pr:
            med, lo, hi = pr[0], pr[1], pr[2]
            out.append({"label": r["label"], "seq_len": n, "speedup": 1 / med, "lo": 1 / hi, "hi": 1 / lo,
                        "crossover": cross.get(r["label"])})
        elif r.get("time_ms") and b.get("time_ms"):
            out.append({"label": r["label"], "seq_len": n, "speedup": b["time_ms"] / r["time_ms"],
                        "lo": np.nan, "hi": np.nan, "crossover": cross.get(r["label"])})
    return pd.DataFrame(out).sort_values(["label", "seq_len"], kind="stable") if out else pd.DataFrame()


def make_plots(df: pd.DataFrame, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name):
        for ext in ("png", "svg"):
            fig.savefig(os.path.join(out_dir, f"{name}.{ext}"), dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(name)

    def plottable(col):  # a log-scaled plot needs a positive value from an ok point
        vals = pd.to_numeric(df.loc[df["status"] == "ok", col], errors="coerce")
        return bool((vals > 0).any())

    labels = list(dict.fromkeys(df["label"]))
    styles = {label: _style(i) for i, label in enumerate(labels)}  # one look per variant in every plot
    for col, name, ylabel, scale in (("time_ms", "time", "time (ms)", 1.0),
                                     ("peak_mem_bytes", "memory", "peak memory (MiB)", 1 / 2**20)):
        if not plottable(col):
            continue
        parts = _split_exact(df)
        fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4.6), sharey=True, squeeze=False)
        for ax, (title, part) in zip(axes[0], parts):
            _plot_lines(ax, part, col, scale, styles)
            _ref_slopes(ax, df, col, scale)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length n")
            ax.set_title(title, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        axes[0][0].set_ylabel(ylabel)
        fig.suptitle(f"{ylabel.split(' (')[0]} against n (log-log); X = oom, v = timeout, hollow = noisy or loaded",
                     fontsize=9)
        save(fig, name)
    speedup = _speedups(df)
    if len(speedup):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        for label, g in speedup.groupby("label", sort=False):
            (line,) = ax.plot(g["seq_len"], g["speedup"], ms=4, lw=1.2, label=label, **styles.get(label, _style(0)))
            lo, hi = g["lo"].to_numpy(float), g["hi"].to_numpy(float)
            if np.isfinite(lo).any():
                ax.fill_between(g["seq_len"], lo, hi, color=line.get_color(), alpha=0.12, lw=0)
            cross = g["crossover"].dropna()
            if len(cross):  # faster than full from here on, resolved by the intervals
                n0 = float(cross.iloc[0])
                y0 = g.loc[g["seq_len"] == n0, "speedup"]
                if len(y0):
                    ax.plot([n0], [float(y0.iloc[0])], marker="|", ms=18, mew=2, color=line.get_color())
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel("speed-up over full (full's time / variant's time)")
        ax.set_title("speed-up over full; band = 95% interval of the paired ratio; | = faster from here on",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        save(fig, "speedup")
    if plottable("peak_fraction"):
        fig, ax = plt.subplots(figsize=(7, 4))
        _plot_lines(ax, df, "peak_fraction", 100, styles)
        ax.set_xscale("log", base=2)
        ax.set_ylabel("% of matmul peak (useful FLOPs)")
        ax.set_xlabel("sequence length n")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        save(fig, "peak_fraction")
    if pd.to_numeric(df["rel_err_vs_full"], errors="coerce").gt(0).any():
        fig, ax = plt.subplots(figsize=(7, 4))
        _plot_lines(ax, df[pd.to_numeric(df["rel_err_vs_full"], errors="coerce") > 0], "rel_err_vs_full", 1.0, styles)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylabel("relative error vs full")
        ax.set_xlabel("sequence length n")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        save(fig, "error")
        # Pareto: time against error at the longest length every variant with an error reached
        ok = df[(df["status"] == "ok") & df["rel_err_vs_full"].notna()]
        if len(ok):
            common = ok.groupby("seq_len")["label"].nunique()
            n = int(common[common == common.max()].index.max())
            pts = ok[ok["seq_len"] == n]
            fig, ax = plt.subplots(figsize=(6, 4.5))
            for _, r in pts.iterrows():
                e = max(float(r["rel_err_vs_full"]), 1e-9)
                ax.scatter([r["time_ms"]], [e])
                ax.annotate(r["label"], (r["time_ms"], e), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("time (ms)")
            ax.set_ylabel("relative error vs full (floor 1e-9)")
            ax.set_title(f"speed against accuracy at n = {n}")
            ax.grid(True, which="both", alpha=0.3)
            save(fig, "pareto")
    return made


def pattern_pictures(df: pd.DataFrame, out_dir: str, n: int = 128) -> list[tuple[str, str, str]]:
    """(label, file, formula) for each exact pattern variant in the results, drawn at n with its
    options shrunk (a plugin's `small_options`, a dict of option caps, else PATTERN_CAPS by
    option name) so that its structure shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .registry import create_attention, get_entry, option_defaults, option_names

    made = []
    for (label, name), g in df.groupby(["label", "variant"], sort=False):
        try:
            opts = g.iloc[0]["options"] if isinstance(g.iloc[0]["options"], dict) else {}
            target = get_entry(name).target
            names, _ = option_names(target)
            defaults = option_defaults(target)
            small = {k: v for k, v in opts.items() if k in names}
            declared = getattr(target, "small_options", None)  # a plugin's own way to draw itself small
            caps = declared if isinstance(declared, dict) else PATTERN_CAPS
            for key, cap in caps.items():  # shrink the pattern so its structure shows at n
                if key in names and key in defaults:
                    now = small.get(key, defaults[key])
                    small[key] = min(now, cap) if isinstance(now, (int, float)) and isinstance(cap, (int, float)) else cap
            if "summary" in names and not isinstance(declared, dict):
                small["summary"] = min(opts.get("summary", 2), small.get("stride", 8))
            attn = create_attention(name, **small)
            mask = getattr(attn, "dense_mask", None)
            if not getattr(attn, "exact", False) or mask is None:
                continue
            m = mask(n, n, False)
        except Exception:  # noqa: BLE001 - a picture is optional; the report goes on
            continue
        fname = f"pattern_{''.join(ch if ch.isalnum() else '_' for ch in label)}.png"
        fig, ax = plt.subplots(figsize=(2.4, 2.4))
        # a fixed range: an all-attending pattern is black, not a blank white square
        ax.imshow(m.numpy().astype(float), cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{name}, n={n}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        fig.savefig(os.path.join(out_dir, fname), dpi=100, bbox_inches="tight")
        plt.close(fig)
        doc = (get_entry(name).target.__doc__ or "").strip().splitlines()
        made.append((label, fname, doc[0] if doc else name))
    return made


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
    cross = [c for c in summ.columns if c.startswith("faster_than_")][0]
    md = ["# effattn report", "", f"Source: {', '.join(paths)}. {len(df)} points, "
          f"{df['label'].nunique()} variants, lengths {', '.join(map(str, sorted(df['seq_len'].unique())))}.", ""]
    counts = df["status"].value_counts().to_dict()
    md.append("Status of the points: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".")
    md.append("")
    for p in ("time", "memory", "speedup", "peak_fraction", "error", "pareto"):
        if p in plots:
            md += [f"![{p}]({p}.png)", ""]
    md.append(table_md(pivot(df, "time_ms"), "Time", "ms"))
    md.append(table_md(pivot(df, "peak_mem_bytes"), "Peak memory", "MiB", scale=1 / 2**20))
    if df["gflops"].notna().any():
        md.append(table_md(pivot(df, "gflops"), "Useful throughput", "GFLOP/s", lower_is_better=False))
    if pd.to_numeric(df["rel_err_vs_full"], errors="coerce").notna().any():
        md.append(table_md(pivot(df, "rel_err_vs_full"), "How far from full attention (relative error against `full`)",
                           "‖out−ref‖/‖ref‖; large for a local pattern by design: it measures the approximation, not a bug"))
    if "rel_err_vs_own_dense" in df and pd.to_numeric(df["rel_err_vs_own_dense"], errors="coerce").notna().any():
        exact_rows = df[df["exact"].fillna(False).astype(bool)] if "exact" in df else df
        md.append(table_md(pivot(exact_rows, "rel_err_vs_own_dense"), "Correctness of exact variants (relative error against "
                           "float64 attention over the variant's own pattern)", "‖out−ref‖/‖ref‖; about 1e-7 when correct"))
    md += ["### Scaling (least-squares fit of log time and log memory against log n)", "",
           "Time exponents are fitted to times scaled by each length's reference rate (the matmul timed in the "
           "same rounds), with a 95% interval (a bootstrap over the rounds: how far the exponent could move if "
           "the sweep were measured again). \"Faster than full from\" is decided per length by the 95% interval "
           "of the round-by-round ratio to full (of the two points' own intervals for rows without rounds); "
           "where the data cannot place the crossover it is given as a range.", "",
           "| variant | time exponent [95%] | memory exponent | fitted from n | faster than full from n | points |",
           "| --- | --- | --- | --- | --- | --- |"]
    for _, r in summ.iterrows():
        te = "" if pd.isna(r["time_exponent"]) else f"{r['time_exponent']:.2f}" + (
            "" if pd.isna(r["time_exponent_lo"]) else f" [{r['time_exponent_lo']:.2f}, {r['time_exponent_hi']:.2f}]")
        me = "" if pd.isna(r["mem_exponent"]) else f"{r['mem_exponent']:.2f}"
        loaded = f", {r['loaded']} measured under load" if r.get("loaded") else ""
        md.append(f"| {_cell(r['label'])} | {te} | {me} | {_fmt(r['fit_from'])} | {_cell(r['crossover'])} | {r['points']}{loaded} |")
    md.append("")
    if pats:
        md += ["### Attention patterns (dense_mask at n = 128, small options)", "",
               "| variant | pattern | what it computes |", "| --- | --- | --- |"]
        md += [f"| {_cell(label)} | ![]({f}) | {_cell(formula)} |" for label, f, formula in pats]
        md.append("")
    noisy = df[df.get("noisy", pd.Series(False, index=df.index)).fillna(False).astype(bool)]
    loaded = df[df.get("loaded", pd.Series(False, index=df.index)).fillna(False).astype(bool)]
    md += ["### Context", ""]
    for run_id, g in df.groupby("run_id", sort=False):
        md.append(f"- run `{run_id}`: " + _run_context(g))
    if len(noisy):
        md += ["", "Noisy points (IQR/median > 10%): " + ", ".join(
            f"{r['label']} n={r['seq_len']}" for _, r in noisy.iterrows())]
    if len(loaded):
        md += ["", "Points measured while the machine was busy (too few quiet rounds: their times are less "
               "certain): " + ", ".join(f"{r['label']} n={r['seq_len']}" for _, r in loaded.iterrows())]
    faults = measurement_faults(df)
    if len(faults):
        md += ["", "Measurement faults (these points claim more than the machine can do; do not trust them):"] + [
            f"- {label} n={n}: {why}" for label, n, why in faults]
    failed = df[df["status"].isin(["error", "oom", "timeout", "unsupported"])]
    if len(failed):
        md += ["", "Points that did not run:"] + [f"- {r['label']} n={r['seq_len']}: {r['status']} ({r['reason']})"
                                                    for _, r in failed.iterrows()]
    body = "\n".join(md) + "\n"
    if "md" in formats:
        written.append(_write(out_dir, "report.md", body))
    if "html" in formats:
        written.append(_write(out_dir, "report.html", _to_html(body)))
    written += [os.path.join(out_dir, f"{p}.png") for p in plots]
    return written


def measurement_faults(df: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(label, n, why) for every row that claims more than the machine can do: flagged when it was
    measured, or - for files written before rows carried the flag - a useful FLOP rate above the
    matmul peak of its own row."""
    out = []
    frac = pd.to_numeric(df.get("peak_fraction", pd.Series(dtype=float)), errors="coerce")
    for i, r in df.iterrows():
        why = r.get("fault")
        if not isinstance(why, str) and frac.get(i, 0) > 1:
            why = (f"useful FLOP rate {r['gflops']:.1f} GFLOP/s is {frac[i]:.0%} of the matmul peak of its run "
                   "(a FLOP count or time that cannot be right)")
        if isinstance(why, str):
            out.append((r["label"], int(r["seq_len"]), why))
    return out


def _run_context(g: pd.DataFrame) -> str:
    """One run's machine and spec. A run spread over Ray workers can differ per row (hosts,
    threads, each worker's own matmul peak): every distinct value is shown, numbers as a range."""
    envs = [e for e in g.get("env", pd.Series(dtype=object)) if isinstance(e, dict)] or [{}]

    def distinct(values, unit=""):
        vals = sorted({v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))},
                      key=str)
        if not vals:
            return "?"
        if len(vals) > 1 and all(isinstance(v, (int, float)) for v in vals):
            return f"{_fmt(min(vals))}–{_fmt(max(vals))}{unit}"
        return ", ".join(_fmt(v) if isinstance(v, float) else str(v) for v in vals) + unit

    first = g.iloc[0]
    text = (f"{distinct(e.get('cpu') for e in envs)}, {distinct(e.get('threads') for e in envs)} threads, torch "
            f"{distinct(e.get('torch') for e in envs)}, device {first['device']}, {first['dtype']}, mode "
            f"{first['mode']}, level {first['level']}, batch {first['batch']}, heads {first['heads']}, head_dim "
            f"{first['head_dim']}, commit {distinct(e.get('git_commit') for e in envs)}, matmul peak "
            f"{distinct(g.get('matmul_peak_gflops', pd.Series(dtype=float)), ' GFLOP/s')}")
    workers = [w for w in g.get("worker", pd.Series(dtype=object)) if isinstance(w, dict)]
    if workers:
        hosts = {w.get("host") for w in workers}
        text += (f"; on Ray: {len({(w.get('host'), w.get('pid')) for w in workers})} worker processes on "
                 f"{len({w.get('ray_node_id') for w in workers})} node(s) ({', '.join(sorted(map(str, hosts)))})")
    return text


def _to_html(md: str) -> str:
    """The report's markdown as a standalone HTML page, rendered by markdown-it-py (CommonMark with
    GitHub's tables: the same rules GitHub uses to show report.md, so both read alike). Raw HTML in
    the markdown is escaped, never passed through."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>effattn report</title>\n"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
            "td{text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>"
            "</head><body>\n" + body + "</body></html>\n")


def _cell(text: str) -> str:
    """Text for a markdown table cell: a `|` would end the cell (even inside a code span)."""
    return str(text).replace("|", "\\|")


def _write(out_dir, name, text):
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


@cli.command()
@click.argument("results", nargs=-1, required=True)
@click.option("--out", "out_dir", default=None, help="folder for the report [default: <first results>-report]")
@click.option("--format", "fmt", default="md", show_default=True, help="comma list of md, html")
def report(results, out_dir, fmt):
    """Write a report (tables, plots, exponents, patterns) from one or more results files."""
    formats = [f.strip() for f in fmt.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("md", "html")]
    if bad or not formats:
        fail(f"--format {fmt!r}: choose from md, html")
    for p in results:
        if not os.path.isfile(p):
            fail(f"results file {p} does not exist")
    if out_dir is not None and not out_dir.strip():
        fail("--out is empty; leave it out to use the default folder")
    out_dir = out_dir or os.path.splitext(results[0])[0] + "-report"
    try:
        written = build_report(list(results), out_dir, formats, on_problem=_warn)
    except OSError as e:
        fail(f"cannot write the report to {out_dir}: {e.strerror or e}")
    for w in written:
        click.echo(w)


def _warn(msg: str) -> None:
    click.echo(f"effattn: warning: {msg}", err=True)


@cli.command()
@click.argument("base")
@click.argument("new")
@click.option("--threshold", type=float, default=0.10, show_default=True,
              help="a slowdown must exceed this fraction to count as a regression")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="significance level of the one-sided Mann-Whitney U test on the points' round times")
def compare(base, new, threshold, alpha):
    """Per-point time ratio NEW/BASE; exit 1 on a regression.

    A regression is a point whose median slowed by more than --threshold AND whose round times are
    significantly slower by a one-sided Mann-Whitney U test at --alpha (as asv decides). A point
    with too few samples for the test to reach --alpha, or measured while its machine was busy, is
    "inconclusive", never a regression. Points are paired only when their whole identity (variant,
    length and configuration: device, dtype, batch, heads, head_dim, causal, mode, level, inputs,
    seed) is equal; the points that could not be paired are listed."""
    from .results import _samples, point_keys
    from .stats import min_p_value, slower_test

    if not (threshold >= 0 and math.isfinite(threshold)):
        fail(f"--threshold {threshold}: must be a finite number >= 0")
    if not 0 < alpha < 1:
        fail(f"--alpha {alpha}: must be between 0 and 1")
    for p in (base, new):
        if not os.path.isfile(p):
            fail(f"results file {p} does not exist")
    a, b = (latest(load(p, on_problem=_warn)) for p in (base, new))
    ra_all = {k: r for k, r in zip(point_keys(a), a.to_dict("records")) if r["status"] == "ok"}
    rb_all = {k: r for k, r in zip(point_keys(b), b.to_dict("records")) if r["status"] == "ok"}
    common = [k for k in ra_all if k in rb_all]
    only_a = [k for k in ra_all if k not in rb_all]
    only_b = [k for k in rb_all if k not in ra_all]
    if not common:
        fail(f"the two runs share no measured point of the same configuration ({base}: "
             f"{_configs(ra_all.values()) or 'no ok point'}; {new}: {_configs(rb_all.values()) or 'no ok point'})")
    counts = {"REGRESSION": 0, "inconclusive": 0}
    click.echo(f"{'variant':40s} {'n':>7s} {'base ms':>10s} {'new ms':>10s} {'ratio':>7s} {'p':>7s}  verdict")
    for k in common:
        ra, rb = ra_all[k], rb_all[k]
        sa, sb = _samples(ra), _samples(rb)
        ta, tb = ra["time_ms"], rb["time_ms"]
        ratio = tb / ta
        p_slower, p_faster = slower_test(sa, sb), slower_test(sb, sa)
        flag = ""
        if ratio - 1 > threshold:
            if ra.get("loaded") is True or rb.get("loaded") is True:
                flag = "inconclusive (measured while the machine was busy)"
            elif min_p_value(len(sa), len(sb)) > alpha:
                flag = f"inconclusive ({len(sa)} and {len(sb)} samples cannot reach p < {alpha:g})"
            elif p_slower < alpha:
                flag = "REGRESSION"
            else:
                flag = "inconclusive (slower, but not beyond the noise)"
        elif 1 - ratio > threshold and p_faster < alpha:
            flag = "faster"
        elif p_slower < alpha:
            flag = "slower (within the threshold)"
        elif p_faster < alpha:
            flag = "faster (within the threshold)"
        key = flag.split(" ")[0]
        if key in counts:
            counts[key] += 1
        p = min(p_slower, p_faster)
        p_text = "-" if p != p else f"{p:.3f}"
        click.echo(f"{ra['label']:40s} {int(ra['seq_len']):7d} {ta:10.2f} {tb:10.2f} {ratio:7.2f} {p_text:>7s}  {flag}")
    for what, rows, keys in (("only in " + base, ra_all, only_a), ("only in " + new, rb_all, only_b)):
        if keys:
            click.echo(f"\n{len(keys)} point(s) {what} (not compared):")
            for k in keys[:20]:
                r = rows[k]
                click.echo(f"  {r['label']} n={r['seq_len']} ({_config_text(r)})")
            if len(keys) > 20:
                click.echo(f"  ... and {len(keys) - 20} more")
    click.echo(f"\n{len(common)} points compared: {counts['REGRESSION']} regressions (slower by more than "
               f"{threshold:.0%} and p < {alpha:g}), {counts['inconclusive']} inconclusive")
    sys.exit(1 if counts["REGRESSION"] else 0)


def _config_text(r) -> str:
    from .store import CONFIG_FIELDS

    return ", ".join(f"{c}={r[c]}" for c in CONFIG_FIELDS if c in r and r[c] is not None and c != "probe")


def _configs(rows) -> str:
    return "; ".join(sorted({_config_text(r) for r in rows}))


