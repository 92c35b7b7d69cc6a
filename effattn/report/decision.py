"""The decision map: for one configuration, the variant `advise` recommends at every length (x,
log) against a memory budget or an error tolerance (y, log), drawn as regions named by their
variant. Past the longest measured length the answer rests on extrapolated figures: that part
of the map is hatched and set apart by a dashed line. A static picture (matplotlib) for the
markdown report; `effattn.report.interactive` draws the same grids for the HTML one."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..store import CONFIG_FIELDS, config_key
from .advise import Constraints, _canon, choose, estimates

NOTHING = "nothing fits"
AXES = {"memory": "memory budget (inputs + peak, MiB)", "error": "error tolerance (relative error against full)"}


@dataclass
class DecisionGrid:
    """The best variant over lengths (columns) and a constraint's values (rows): `best[i][j]` is
    the label recommended at `ys[i]` and `lengths[j]`, or None where nothing meets it."""

    axis: str  # "memory" or "error"
    lengths: list[int]
    ys: list[float]
    best: list[list[str | None]]
    times: list[list[float | None]]
    #: the longest measured length: columns past it are extrapolated
    measured_to: int


def decision_grid(rows: pd.DataFrame, axis: str, n_lengths: int = 33, n_ys: int = 25, reach: int = 4):
    """The decision map of one configuration: for every length of a log grid (the measured range
    and `reach` times past it) and every memory budget or error tolerance of a log grid, the
    variant `choose` recommends. None when the rows hold too little to draw one."""
    lens = sorted(int(n) for n in rows.loc[rows["status"] == "ok", "seq_len"].unique())
    if len(lens) < 2:
        return None
    lengths = sorted({int(round(v)) for v in np.geomspace(lens[0], lens[-1] * reach, n_lengths)} | set(lens))
    per_length = [estimates(rows, n, draws=0)[0] for n in lengths]
    every = [e for found in per_length for e in found]
    if axis == "memory":
        vals = [e.memory_bytes for e in every if e.memory_bytes]
        if not vals:
            return None
        # up to where the answer stops changing: twice the memory of the fastest at each length
        fastest = [min(found, key=lambda e: e.time_ms).memory_bytes for found in per_length if found]
        top = max([m for m in fastest if m] or vals) * 2
        ys = list(np.geomspace(min(vals) * 0.8, max(top, min(vals) * 4), n_ys))
    else:
        vals = [e.rel_err for e in every if e.rel_err]
        if not vals:
            return None
        ys = list(np.geomspace(max(min(vals) * 0.5, 1e-8), max(vals) * 1.5, n_ys))
    best, times = [], []
    for y in ys:
        row_b, row_t = [], []
        for n, found in zip(lengths, per_length):
            c = Constraints(n, memory_budget_bytes=int(y) if axis == "memory" else None,
                            max_error=float(y) if axis == "error" else None)  # fmt: skip
            a = choose(c, found, [], {})
            row_b.append(a.recommended)
            row_t.append(a.candidates[0].time_ms if a.candidates else None)
        best.append(row_b)
        times.append(row_t)
    return DecisionGrid(axis, lengths, ys, best, times, int(lens[-1]))


def map_configs(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) for each configuration of timing points that a decision map can be drawn for
    (two or more lengths measured ok)."""
    out = []
    keys = pd.Series([config_key(r) for r in df.to_dict("records")], index=df.index)
    varying = [f for f in CONFIG_FIELDS if f in df and df[f].map(_canon).nunique() > 1]
    for key in dict.fromkeys(keys):
        rows = df[keys == key]
        if rows.loc[rows["status"] == "ok", "seq_len"].nunique() < 2:
            continue
        first = rows.iloc[0]
        title = ", ".join(f"{f}={_canon(first[f])}" for f in varying) or f"{first['mode']}"
        out.append((title, rows))
    return out


def decision_grids(df: pd.DataFrame, max_configs: int = 4) -> list[tuple[str, list[DecisionGrid]]]:
    """(title, [memory grid, error grid where the rows carry errors]) per configuration."""
    rows = df.assign(label=df["base_label"]) if "base_label" in df else df
    rows = rows[~rows.get("kind", pd.Series(None, index=rows.index)).eq("task")]
    out = []
    for title, g in map_configs(rows)[:max_configs]:
        grids = [x for x in (decision_grid(g, "memory"), decision_grid(g, "error")) if x is not None]
        if grids:
            out.append((title, grids))
    return out


def region_codes(grid: DecisionGrid) -> tuple[np.ndarray, list[str]]:
    """The grid as integer codes (one per variant, in order of first appearance; NOTHING last)."""
    names = list(dict.fromkeys(b for row in grid.best for b in row if b is not None))
    has_nothing = any(b is None for row in grid.best for b in row)
    if has_nothing:
        names.append(NOTHING)
    index = {n: i for i, n in enumerate(names)}
    codes = np.array([[index[b if b is not None else NOTHING] for b in row] for row in grid.best])
    return codes, names


def label_spots(grid: DecisionGrid, codes: np.ndarray, names: list[str], min_share: float = 0.03):
    """(name, x, y) to write each region's name at: the cell of the region nearest its centre;
    regions of fewer than `min_share` of the cells are named by the legend alone."""
    xs, ys = np.log(grid.lengths), np.log(grid.ys)
    spots = []
    for i, name in enumerate(names):
        r, c = np.nonzero(codes == i)
        if len(r) < max(1, min_share * codes.size):
            continue
        cx, cy = xs[c].mean(), ys[r].mean()
        k = int(np.argmin((xs[c] - cx) ** 2 / np.ptp(xs) ** 2 + (ys[r] - cy) ** 2 / max(np.ptp(ys), 1e-9) ** 2))
        spots.append((name, float(grid.lengths[c[k]]), float(grid.ys[r[k]])))
    return spots


def _edges(values) -> np.ndarray:
    """Cell edges between log-spaced centres."""
    v = np.log(np.asarray(values, float))
    mid = (v[1:] + v[:-1]) / 2
    return np.exp(np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]]))


def draw_decision_maps(maps, out_dir: str, styles: dict | None = None) -> list[tuple[str, str]]:
    """decision_map.png (decision_map_<i>.png for the i-th configuration after the first) for
    `maps` (decision_grids' output); [(file name, title)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from .plots import _style

    written = []
    for k, (title, grids) in enumerate(maps):
        fig, axes = plt.subplots(1, len(grids), figsize=(7.4 * len(grids), 4.6), squeeze=False)
        for ax, grid in zip(axes[0], grids):
            codes, names = region_codes(grid)
            colours = [(styles or {}).get(n, {}).get("color") or _style(i)["color"] for i, n in enumerate(names)]
            colours = [(0.85, 0.85, 0.85) if n == NOTHING else c for n, c in zip(names, colours)]
            scale = 1 / 2**20 if grid.axis == "memory" else 1.0
            ax.pcolormesh(_edges(grid.lengths), _edges(grid.ys) * scale, codes, cmap=ListedColormap(colours),
                          vmin=-0.5, vmax=len(names) - 0.5, shading="flat")  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            top = _edges(grid.lengths)[-1]
            ax.axvspan(grid.measured_to, top, facecolor="none", edgecolor="white", hatch="//", lw=0)
            ax.axvline(grid.measured_to, color="black", ls="--", lw=1)
            ax.text(grid.measured_to, 1.01, " extrapolated →", transform=ax.get_xaxis_transform(), fontsize=8)
            ax.text(grid.measured_to, 1.01, "← measured ", transform=ax.get_xaxis_transform(), fontsize=8, ha="right")
            for name, x, y in label_spots(grid, codes, names):
                ax.text(x, y * scale, name, ha="center", va="center", fontsize=8,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.75, "lw": 0})  # fmt: skip
            ax.set_xlabel("sequence length n")
            ax.set_ylabel(AXES[grid.axis])
            handles = [Patch(facecolor=c, label=n) for n, c in zip(names, colours)]
            ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        fig.suptitle(f"Fastest variant that fits ({title})", fontsize=10)
        fig.tight_layout()
        name = f"decision_map_{k}.png" if k else "decision_map.png"
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        written.append((name, title))
    return written
