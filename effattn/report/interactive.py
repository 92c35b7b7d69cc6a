"""The HTML report's interactive plots, drawn with plotly and embedded whole in the page (the
plotly.js bundle is written into the file once: nothing is fetched when it is opened).

Every plot has log axes, a legend that hides and shows a variant (click) or shows it alone
(double click), and hover values: time with its 95% interval, memory, status, and whether the
point was measured while the machine was busy. A variant keeps its colour in every plot, the
decision maps included."""

from __future__ import annotations

import math

import pandas as pd

from .decision import AXES, NOTHING, DecisionGrid, label_spots, region_codes

#: plotly's own id for the embedded bundle; the page carries it once
_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["toImage"]}
FAILED = ("oom", "timeout", "error", "unsupported")


def plotly_bundle() -> str:
    """The plotly.js source, to be inlined once in the page's head."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _colours(df: pd.DataFrame) -> dict[str, str]:
    """label -> the colour its line has in the static plots, as CSS."""
    from .plots import label_styles

    return {
        label: "rgb({},{},{})".format(*(int(255 * c) for c in st["color"][:3]))
        for label, st in label_styles(df).items()
    }


def _hover(r) -> str:
    if r["status"] != "ok":
        return f"<b>{r['label']}</b><br>n = {int(r['seq_len'])}<br>{r['status']}: {str(r.get('reason') or '')[:120]}"
    ci = r.get("time_ci_ms")
    interval = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    peak = r.get("peak_mem_bytes")
    mem = f"{peak / 2**20:.1f} MiB" if isinstance(peak, (int, float)) and peak == peak else "not measured"
    err = r.get("rel_err_vs_full")
    err_text = f"<br>error vs full {err:.3g}" if isinstance(err, (int, float)) and err == err else ""
    busy = "<br>measured while the machine was busy" if r.get("loaded") is True else ""
    return (
        f"<b>{r['label']}</b><br>n = {int(r['seq_len'])}<br>time {r['time_ms']:.3g} ms{interval} (95%)"
        f"<br>peak memory {mem}{err_text}<br>status ok{busy}"
    )


def _line_figure(df: pd.DataFrame, col: str, title: str, ytitle: str, colours: dict, scale: float = 1.0):
    import plotly.graph_objects as go

    fig = go.Figure()
    values = pd.to_numeric(df.loc[df["status"] == "ok", col], errors="coerce") * scale
    top = float(values.max()) * 1.6 if values.notna().any() else 1.0
    for label, g in df.groupby("label", sort=False):
        g = g.sort_values("seq_len")
        ok = g[(g["status"] == "ok") & pd.to_numeric(g[col], errors="coerce").gt(0)]
        bad = g[g["status"].isin(FAILED)]
        if ok.empty and bad.empty:
            continue
        y = ok[col].astype(float) * scale
        err = None
        if col == "time_ms" and "time_ci_ms" in ok:
            pairs = zip(ok["time_ci_ms"], ok[col])
            ci = [c if isinstance(c, (list, tuple)) and len(c) == 2 else (t, t) for c, t in pairs]
            err = {
                "type": "data",
                "symmetric": False,
                "array": [max(0.0, hi - t) for (_, hi), t in zip(ci, ok[col])],
                "arrayminus": [max(0.0, t - lo) for (lo, _), t in zip(ci, ok[col])],
                "thickness": 1,
                "width": 2,
            }
        busy = ok.get("loaded", pd.Series(False, index=ok.index)).fillna(False).astype(bool)
        fig.add_trace(
            go.Scatter(
                x=ok["seq_len"], y=y, mode="lines+markers", name=label, legendgroup=label,
                line={"color": colours[label], "width": 1.5}, error_y=err,
                marker={"symbol": ["circle-open" if b else "circle" for b in busy], "size": 7},
                hovertext=[_hover(r) for r in ok.to_dict("records")], hoverinfo="text",
            )
        )  # fmt: skip
        if len(bad):
            fig.add_trace(
                go.Scatter(
                    x=bad["seq_len"], y=[top] * len(bad), mode="markers+text", name=f"{label} (did not run)",
                    legendgroup=label, showlegend=False, text=list(bad["status"]), textposition="top center",
                    marker={"symbol": "x", "size": 9, "color": colours[label]},
                    hovertext=[_hover(r) for r in bad.to_dict("records")], hoverinfo="text",
                )
            )  # fmt: skip
    fig.update_xaxes(type="log", title="sequence length n", dtick=math.log10(2), tickformat="d")
    fig.update_yaxes(type="log", title=ytitle)
    fig.update_layout(title=title, height=480, margin={"l": 60, "r": 20, "t": 50, "b": 50}, hovermode="closest")
    return fig


def _map_figure(grid: DecisionGrid, title: str, colours: dict):
    import plotly.graph_objects as go

    codes, names = region_codes(grid)
    scale = 1 / 2**20 if grid.axis == "memory" else 1.0
    ys = [y * scale for y in grid.ys]
    cols = [("rgb(215,215,215)" if n == NOTHING else colours.get(n, "rgb(120,120,120)")) for n in names]
    k = max(len(names), 1)
    scale_steps = []
    for i, c in enumerate(cols):
        scale_steps += [[i / k, c], [(i + 1) / k, c]]
    text = [
        [
            f"n = {n}<br>{'budget' if grid.axis == 'memory' else 'tolerance'} {y:.3g}"
            f"{' MiB' if grid.axis == 'memory' else ''}<br><b>{b or NOTHING}</b>"
            + (f"<br>{t:.3g} ms" if t is not None else "")
            + ("<br>(extrapolated)" if n > grid.measured_to else "")
            for n, b, t in zip(grid.lengths, row_b, row_t)
        ]
        for y, row_b, row_t in zip(ys, grid.best, grid.times)
    ]
    fig = go.Figure(
        go.Heatmap(
            x=grid.lengths, y=ys, z=codes, zmin=-0.5, zmax=k - 0.5, colorscale=scale_steps, showscale=False,
            hovertext=text, hoverinfo="text", name="decision map",
        )
    )  # fmt: skip
    fig.add_vrect(x0=grid.measured_to, x1=max(grid.lengths) * 1.2, fillcolor="white", opacity=0.35, line_width=0)
    fig.add_vline(x=grid.measured_to, line_dash="dash", line_color="black")
    fig.add_annotation(x=math.log10(grid.measured_to), y=1.04, yref="paper", text="measured | extrapolated",
                       showarrow=False, font={"size": 11})  # fmt: skip
    for name, x, y in label_spots(grid, codes, names):
        fig.add_annotation(x=math.log10(x), y=math.log10(y * scale), text=name, showarrow=False,
                           bgcolor="rgba(255,255,255,0.75)", font={"size": 11})  # fmt: skip
    fig.update_xaxes(type="log", title="sequence length n", dtick=math.log10(2), tickformat="d")
    fig.update_yaxes(type="log", title=AXES[grid.axis])
    fig.update_layout(title=title, height=480, margin={"l": 70, "r": 20, "t": 60, "b": 50})
    return fig


def interactive_plots(df: pd.DataFrame, maps) -> dict[str, str]:
    """name -> an HTML div (plotly, without its bundle) for the report's plots: time, memory,
    error, and one per decision map (`maps`: decision.decision_grids' output)."""
    timing = df[~df.get("kind", pd.Series(None, index=df.index)).eq("task")]
    colours = _colours(timing)
    figs = {
        "time": _line_figure(timing, "time_ms", "Time per call (95% interval)", "time (ms)", colours),
        "memory": _line_figure(timing, "peak_mem_bytes", "Peak memory", "peak memory (MiB)", colours, 1 / 2**20),
    }
    if pd.to_numeric(timing["rel_err_vs_full"], errors="coerce").gt(0).any():
        figs["error"] = _line_figure(timing, "rel_err_vs_full", "Error against full", "relative error", colours)
    for k, (title, grids) in enumerate(maps):
        for grid in grids:
            what = "memory budget" if grid.axis == "memory" else "error tolerance"
            figs[f"map_{k}_{grid.axis}"] = _map_figure(grid, f"Fastest variant that fits: {what} ({title})", colours)
    return {
        name: fig.to_html(full_html=False, include_plotlyjs=False, config=_CONFIG, div_id=f"plot-{name}")
        for name, fig in figs.items()
    }
