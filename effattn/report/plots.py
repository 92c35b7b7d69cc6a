"""The report's plots: time and memory against n (exact and approximate variants in separate
panels), the speed-up over `full` with its intervals and crossovers, the fraction of the matmul
peak, the error against `full`, and speed against accuracy. Each variant keeps one colour and
marker in every plot; noisy or loaded points are drawn hollow."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

STATUS_MARKERS = {"oom": "X", "timeout": "v", "error": "s", "unsupported": "d"}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _style(i: int) -> dict:
    """The i-th series' colour and marker: the 10 strong colours, then their 10 light shades, each
    with another marker: no two of 100 series look alike, and the first 20 differ in colour."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors  # (strong, light) pairs
    colour = tab20[2 * (i % 10) + (i // 10) % 2]
    return {"color": colour, "marker": MARKERS[(i + i // 10) % 10]}


def label_styles(df: pd.DataFrame) -> dict:
    """label -> colour and marker, in the rows' order: the same in every plot of a report (the
    decision maps, which name variants by their measured label, find them under it too)."""
    styles = {label: _style(i) for i, label in enumerate(dict.fromkeys(df["label"]))}
    if "base_label" in df:
        for label, base in zip(df["label"], df["base_label"]):
            if isinstance(base, str):
                styles.setdefault(base, styles[label])
    return styles


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
        if not pd.to_numeric(ok[col], errors="coerce").notna().any() and not g["status"].isin(STATUS_MARKERS).any():
            continue  # nothing to draw (e.g. no FLOP count for an approximate variant): no legend entry
        (line,) = ax.plot(ok["seq_len"], ok[col] * scale, ms=4, lw=1.2, label=label, **st)
        hollow = ok[_flagged(ok)]
        if len(hollow):  # noisy or loaded: a white-filled marker over the line's
            ax.plot(
                hollow["seq_len"],
                hollow[col] * scale,
                linestyle="none",
                marker=st["marker"],
                ms=4,
                markerfacecolor="white",
                markeredgecolor=st["color"],
            )
        bad = g[g["status"].isin(STATUS_MARKERS)]
        for _, r in bad.iterrows():  # failures sit at the top edge, in the line's colour
            ax.annotate(
                STATUS_MARKERS[r["status"]],
                (r["seq_len"], 1.0),
                xycoords=("data", "axes fraction"),
                color=line.get_color(),
                ha="center",
                va="top",
                fontsize=9,
            )


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
    from ..results import paired_ratio, summary

    ok = df[df["status"] == "ok"]

    def config(label: str) -> str:  # "sliding_window [mode=fwd]" -> " [mode=fwd]" (see results.label_series)
        return label[label.index(" [") :] if " [" in label else ""

    base = {
        (config(r["label"]), int(r["seq_len"])): r
        for r in ok.to_dict("records")
        if r["label"] == baseline + config(r["label"])
    }
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
            out.append(
                {
                    "label": r["label"],
                    "seq_len": n,
                    "speedup": 1 / med,
                    "lo": 1 / hi,
                    "hi": 1 / lo,
                    "crossover": cross.get(r["label"]),
                }
            )
        elif r.get("time_ms") and b.get("time_ms"):
            out.append(
                {
                    "label": r["label"],
                    "seq_len": n,
                    "speedup": b["time_ms"] / r["time_ms"],
                    "lo": np.nan,
                    "hi": np.nan,
                    "crossover": cross.get(r["label"]),
                }
            )
    return pd.DataFrame(out).sort_values(["label", "seq_len"], kind="stable") if out else pd.DataFrame()


class _Figures:
    """Where the report's figures go: one PNG each, named as the report links them."""

    def __init__(self, out_dir: str):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.out_dir, self.made = plt, out_dir, []

    def new(self, **kw):
        return self.plt.subplots(**kw)

    def save(self, fig, name: str) -> None:
        fig.savefig(os.path.join(self.out_dir, f"{name}.png"), dpi=110, bbox_inches="tight")
        self.plt.close(fig)
        self.made.append(name)


def _plottable(df: pd.DataFrame, col: str) -> bool:
    """A log-scaled plot needs a positive value from an ok point."""
    if col not in df:
        return False
    vals = pd.to_numeric(df.loc[df["status"] == "ok", col], errors="coerce")
    return bool((vals > 0).any())


def make_plots(df: pd.DataFrame, out_dir: str) -> list[str]:
    """Every plot the rows allow, one look per variant in all of them; the names made."""
    figs = _Figures(out_dir)
    styles = label_styles(df)
    decode = "mode" in df and (df["mode"] == "decode").all()
    for col, name, ylabel, scale in (
        ("time_ms", "time", "time per generated token (ms)" if decode else "time (ms)", 1.0),
        ("peak_mem_bytes", "memory", "peak memory of a step (MiB)" if decode else "peak memory (MiB)", 1 / 2**20),
        ("cache_bytes", "cache", "cache at context n (MiB)", 1 / 2**20),
    ):
        if _plottable(df, col):
            _against_n(figs, df, col, name, ylabel, scale, styles)
    _speedup(figs, df, styles)
    if _plottable(df, "bandwidth_fraction"):
        title = "bandwidth a decoding step reaches reading what it reads (> 100%: read from CPU caches)"
        _fraction(figs, df, "bandwidth_fraction", "bandwidth", "% of measured memory bandwidth", title, styles)
    if _plottable(df, "peak_fraction"):
        _fraction(figs, df, "peak_fraction", "peak_fraction", "% of matmul peak (useful FLOPs)", None, styles)
    err = pd.to_numeric(df["rel_err_vs_full"], errors="coerce")
    if ((df["status"] == "ok") & (err > 0)).any():  # a log axis needs a positive error of an ok point
        _error(figs, df[(df["status"] == "ok") & (err > 0)], styles)
        _pareto(figs, df, styles)
    return figs.made


def _against_n(figs, df, col, name, ylabel, scale, styles) -> None:
    """`col` against n, log-log: exact and approximate variants in two panels, n and n^2 slopes."""
    parts = _split_exact(df)
    fig, axes = figs.new(ncols=len(parts), figsize=(5.2 * len(parts), 4.6), sharey=True, squeeze=False)
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
    what = ylabel.split(" (")[0]
    fig.suptitle(f"{what} against n (log-log); X = oom, v = timeout, hollow = noisy or loaded", fontsize=9)
    figs.save(fig, name)


def _speedup(figs, df, styles) -> None:
    speedup = _speedups(df)
    if not len(speedup):
        return
    fig, ax = figs.new(figsize=(7.5, 4.6))
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
    ax.set_title("speed-up over full; band = 95% interval of the paired ratio; | = faster from here on", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    figs.save(fig, "speedup")


def _fraction(figs, df, col, name, ylabel, title, styles) -> None:
    """A fraction of something the machine was measured to do (its peak, its bandwidth), in %."""
    fig, ax = figs.new(figsize=(7, 4))
    _plot_lines(ax, df, col, 100, styles)
    ax.set_xscale("log", base=2)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("context length n" if name == "bandwidth" else "sequence length n")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    figs.save(fig, name)


def _error(figs, ok, styles) -> None:
    fig, ax = figs.new(figsize=(7, 4))
    _plot_lines(ax, ok, "rel_err_vs_full", 1.0, styles)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylabel("relative error vs full")
    ax.set_xlabel("sequence length n")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    figs.save(fig, "error")


def _pareto(figs, df, styles) -> None:
    """Time against error at the longest length every variant with an error reached."""
    ok = df[(df["status"] == "ok") & df["rel_err_vs_full"].notna()]
    if not len(ok):
        return
    common = ok.groupby("seq_len")["label"].nunique()
    n = int(common[common == common.max()].index.max())
    fig, ax = figs.new(figsize=(6, 4.5))
    xy = []
    for _, r in ok[ok["seq_len"] == n].iterrows():
        e = max(float(r["rel_err_vs_full"]), 1e-9)
        ax.scatter([r["time_ms"]], [e], color=styles.get(r["label"], _style(0))["color"])
        xy.append((r["label"], float(r["time_ms"]), e))
    ax.set_xscale("log")
    ax.set_yscale("log")
    place_labels(ax, xy, fontsize=7)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("relative error vs full (floor 1e-9)")
    ax.set_title(f"speed against accuracy at n = {n}")
    ax.grid(True, which="both", alpha=0.3)
    figs.save(fig, "pareto")


#: where a label may sit around its point (points of offset), nearest first
_OFFSETS = [(4, 4), (4, -10), (-4, 4), (-4, -10), (4, 14), (4, -20), (-4, 14), (-4, -20), (10, 24), (10, -30),
            (-10, 24), (-10, -30), (14, 36), (14, -42), (-14, 36), (-14, -42)]  # fmt: skip


def place_labels(ax, points, fontsize=7) -> list:
    """Label each (label, x, y) beside its point where it overlaps no label placed before (the
    nearest free offset, else the least overlapping one, with a leader line); returns the labels'
    boxes in display coordinates."""
    fig = ax.figure
    fig.canvas.draw()  # the axes' scales and limits, for display coordinates
    renderer = fig.canvas.get_renderer()
    placed = []
    dots = [ax.transData.transform((x, y)) for _, x, y in points]
    for label, x, y in points:
        best = None
        for dx, dy in _OFFSETS:
            ha = "left" if dx >= 0 else "right"
            t = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=ha)
            box = t.get_window_extent(renderer).expanded(1.05, 1.15)
            cost = sum(_overlap(box, b) for b in placed) + sum(
                box.contains(px, py) for px, py in dots
            ) * box.width * box.height  # fmt: skip
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, box, (dx, dy))
            else:
                t.remove()
            if cost == 0:
                break
        cost, t, box, (dx, dy) = best
        if abs(dx) > 4 or abs(dy) > 14:
            t.arrow_patch = None
            t.set_annotation_clip(False)
            ax.annotate("", (x, y), xytext=(dx, dy), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"})  # fmt: skip
        placed.append(box)
    return placed


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def accuracy_plot(tasks: pd.DataFrame, out_dir: str) -> bool:
    """Test accuracy per variant (one dot per seed and length, the mean as a bar) for training
    runs; False when no run ended ok."""
    ok = tasks[tasks["status"] == "ok"]
    acc = pd.to_numeric(ok.get("test_accuracy"), errors="coerce")
    if ok.empty or not acc.notna().any():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(
        ok.groupby([ok["task"].astype(str), ok["task_options"].astype(str), ok["train_spec"].astype(str)], sort=False)
    )
    width = sum(max(3.0, 0.9 * g["label"].nunique() + 1.5) for _, g in groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(width, 3.8), squeeze=False, sharey=True)
    styles = {label: _style(i) for i, label in enumerate(dict.fromkeys(ok["label"]))}
    for k, (ax, ((task, _, _), g)) in enumerate(zip(axes[0], groups)):
        labels = list(dict.fromkeys(g["label"]))
        for i, label in enumerate(labels):
            a = pd.to_numeric(g.loc[g["label"] == label, "test_accuracy"], errors="coerce")
            ax.bar(i, a.mean(), color=styles[label]["color"], alpha=0.35, width=0.6)
            ax.scatter([i] * len(a), a, color=styles[label]["color"], zorder=3, s=14)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task} ({k + 1} of {len(groups)})" if len(groups) > 1 else task, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylim(0, 1.02)
    axes[0][0].set_ylabel("test accuracy")
    fig.suptitle("test accuracy per variant (bar: mean; dots: one per seed and length)", fontsize=9)
    fig.savefig(os.path.join(out_dir, "accuracy.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True
