"""Markdown tables: one row per variant, one column per length, the best value in bold; a variant
with no value in a table is left out of it."""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd


def fmt(x, digits=3):
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
    # numbers right-aligned (in the HTML page and wherever the markdown is rendered)
    lines = [f"### {title} ({unit}; **bold** = best in column)", "", head, "| --- |" + " ---: |" * len(t.columns)]
    for label, row in t.iterrows():
        cells = []
        for c in t.columns:
            v = row[c]
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and not pd.isna(v):  # NumPy ints too
                s = fmt(v * scale)
                cells.append(f"**{s}**" if best.get(c) == label else s)
            else:
                cells.append("" if pd.isna(v) else str(v))
        if not any(cells):  # a variant with no value here (no FLOP count, say) gets no empty row
            continue
        lines.append(f"| {cell(label)} | " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def cell(text: str) -> str:
    """Text for a markdown table cell: a `|` would end the cell (even inside a code span)."""
    return str(text).replace("|", "\\|")
