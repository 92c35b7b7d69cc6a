"""The decision map: for one configuration, the variant `advise` recommends at every length (x,
log) against a memory budget or an error tolerance (y, log), drawn as regions named by their
variant. Past the longest measured length the answer rests on extrapolated figures: that part
of the map is hatched and set apart by a dashed line. A static picture (matplotlib) for the
markdown report; `effattn.report.interactive` draws the same grids for the HTML one."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .advise import DecisionGrid, decision_grid, map_configs

NOTHING = "nothing fits"
AXES = {"memory": "memory budget (inputs + peak, MiB)", "error": "error tolerance (relative error against full)"}


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
