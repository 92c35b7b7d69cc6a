"""Comparing two runs point by point: is NEW slower than BASE beyond the noise?"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Comparison:
    """What `compare_runs` found. `points` has one dict per paired point (label, seq_len,
    base_ms, new_ms, ratio, p, verdict); `only_base` and `only_new` are the ok rows that could not
    be paired; `regressions` and `inconclusive` count the verdicts."""

    points: list[dict] = field(default_factory=list)
    only_base: list[dict] = field(default_factory=list)
    only_new: list[dict] = field(default_factory=list)
    regressions: int = 0
    inconclusive: int = 0
    machines: str | None = None  # why the runs' machines differ (their times then decide nothing)


def compare_runs(base: pd.DataFrame, new: pd.DataFrame, threshold: float = 0.10, alpha: float = 0.05) -> Comparison:
    """Per-point time ratio NEW/BASE over the points both measured ok.

    A regression is a point whose median slowed by more than `threshold` AND whose round times are
    significantly slower by a one-sided Mann-Whitney U test at `alpha` (as asv decides). A point
    with too few samples for the test to reach `alpha`, or measured while its machine was busy, is
    "inconclusive", never a regression. Points are paired only when their whole identity (variant,
    length and configuration) is equal. `base` and `new` are frames from `effattn.results.load`."""
    from ..results import _samples, latest, point_keys
    from ..stats import min_p_value, slower_test

    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold {threshold}: must be a finite number >= 0")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha {alpha}: must be between 0 and 1")
    a, b = latest(base), latest(new)
    out_machines = machines_differ(a, b)
    ra_all = {k: r for k, r in zip(point_keys(a), a.to_dict("records")) if r["status"] == "ok"}
    rb_all = {k: r for k, r in zip(point_keys(b), b.to_dict("records")) if r["status"] == "ok"}
    out = Comparison(
        only_base=[r for k, r in ra_all.items() if k not in rb_all],
        only_new=[r for k, r in rb_all.items() if k not in ra_all],
    )
    for k in (k for k in ra_all if k in rb_all):
        ra, rb = ra_all[k], rb_all[k]
        sa, sb = _samples(ra), _samples(rb)
        ta, tb = ra["time_ms"], rb["time_ms"]
        ratio = tb / ta
        p_slower, p_faster = slower_test(sa, sb), slower_test(sb, sa)
        verdict = ""
        if ratio - 1 > threshold:
            if out_machines:
                verdict = "inconclusive (measured on different machines or thread counts)"
            elif ra.get("loaded") is True or rb.get("loaded") is True:
                verdict = "inconclusive (measured while the machine was busy)"
            elif min_p_value(len(sa), len(sb)) > alpha:
                verdict = f"inconclusive ({len(sa)} and {len(sb)} samples cannot reach p < {alpha:g})"
            elif p_slower < alpha:
                verdict = "REGRESSION"
            else:
                verdict = "inconclusive (slower, but not beyond the noise)"
        elif 1 - ratio > threshold and p_faster < alpha:
            verdict = "faster"
        elif p_slower < alpha:
            verdict = "slower (within the threshold)"
        elif p_faster < alpha:
            verdict = "faster (within the threshold)"
        else:
            verdict = "no change (within the noise)"
        out.regressions += verdict == "REGRESSION"
        out.inconclusive += verdict.startswith("inconclusive")
        out.points.append(
            {
                "label": ra["label"],
                "seq_len": int(ra["seq_len"]),
                "base_ms": ta,
                "new_ms": tb,
                "ratio": ratio,
                "p": min(p_slower, p_faster),
                "verdict": verdict,
            }
        )
    out.machines = out_machines
    return out


def _machine(r) -> tuple | None:
    e = r.get("env")
    if not isinstance(e, dict) or r.get("executor") == "ray":
        return None
    return (e.get("host"), e.get("cpu"), e.get("threads"), e.get("gpu"))


def machines_differ(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    """Why the two runs' times are not comparable (another host, CPU, GPU or thread count), or None."""
    ma = {m for m in map(_machine, a.to_dict("records")) if m}
    mb = {m for m in map(_machine, b.to_dict("records")) if m}
    if not ma or not mb or ma == mb:
        return None

    def text(ms):
        return "; ".join(f"{h} ({c}{', ' + g if g else ''}), {t} thread(s)" for h, c, t, g in sorted(ms, key=str))

    return f"BASE was measured on {text(ma)}, NEW on {text(mb)}"


def config_text(r) -> str:
    """A row's configuration, as `device=cpu, dtype=float32, ...`."""
    from ..store import CONFIG_FIELDS

    return ", ".join(f"{c}={r[c]}" for c in CONFIG_FIELDS if c in r and r[c] is not None and c != "probe")


def configs_text(rows) -> str:
    return "; ".join(sorted({config_text(r) for r in rows}))
