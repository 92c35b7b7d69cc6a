"""Results as data: load JSON-lines sweeps into a tidy DataFrame, fit scaling exponents.

What makes two rows the same point is defined once, in `effattn.store` (POINT_FIELDS): fits,
crossovers, reports and comparisons never mix two configurations, and where a file holds a point
twice (a point measured again after an error) the newest row is the one used.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from .stats import CONFIDENCE, crossover, exponent_ci, fit_loglog, median_ci, verdict
from .store import (
    CONFIG_FIELDS,
    FIELD_DEFAULTS,
    SCRIPT_KINDS,
    ResultsFileError,
    config_key,
    describe_problems,
    point_key,
    read_results,
)

COLUMNS = [
    "run_id",
    "label",
    "variant",
    "seq_len",
    "status",
    "reason",
    "time_ms",
    "time_iqr_ms",
    "time_ci_ms",
    "noisy",
    "loaded",
    "rounds",
    "loaded_rounds",
    "first_call_ms",
    "peak_mem_bytes",
    "retained_bytes",
    "gflops",
    "peak_fraction",
    "fault",
    "attended_pairs",
    "rel_err_vs_full",
    "cosine_vs_full",
    "rel_err_vs_own_dense",
    "backend",
    *CONFIG_FIELDS,
]


def load(*paths: str, on_problem=None) -> pd.DataFrame:
    """One row per point, units in the column names (time_ms, peak_mem_bytes, ...). A file that is
    no results file raises `effattn.store.ResultsFileError`; lines that are no results rows are
    skipped and reported through `on_problem` (default: a warning), naming their line numbers."""
    rows = []
    for p in paths:
        got, problems = read_results(p, missing_ok=False)
        if problems:
            msg = describe_problems(p, problems)
            on_problem(msg) if on_problem else warnings.warn(msg, stacklevel=2)
        rows += got
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    for c, default in FIELD_DEFAULTS.items():
        df[c] = df[c].astype(object).where(df[c].notna(), default)
    if len(df):
        df["seq_len"] = df["seq_len"].astype(int)
        for c in (
            "time_ms",
            "time_iqr_ms",
            "peak_mem_bytes",
            "retained_bytes",
            "gflops",
            "peak_fraction",
            "rel_err_vs_full",
            "rel_err_vs_own_dense",
            "first_call_ms",
        ):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def point_keys(df: pd.DataFrame) -> list[tuple]:
    return [point_key(r) for r in df.to_dict("records")]


def measured(df: pd.DataFrame, paths, on_problem=None) -> pd.DataFrame:
    """The timing points and training runs of loaded files, without the records of benchmark
    scripts (`effattn.store.SCRIPT_KINDS`), which reports and comparisons do not read. Files that
    hold nothing else are refused with `ResultsFileError`, naming the script that reads them."""
    kind = df["kind"] if "kind" in df else pd.Series(None, index=df.index, dtype=object)
    script = kind.isin(list(SCRIPT_KINDS))
    if not script.any():
        return df
    kinds = sorted(set(kind[script]))
    readers = ", ".join(f"{k!r} rows are read by {SCRIPT_KINDS[k]}" for k in kinds)
    names = ", ".join(str(p) for p in paths)
    if script.all():
        raise ResultsFileError(f"{names}: no timing points or training runs, only script records ({readers})")
    if on_problem:
        on_problem(f"{names}: left out {int(script.sum())} script record(s) ({readers})")
    return df[~script]


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The newest row of each point (file order), everything else dropped."""
    if df.empty:
        return df
    keys = pd.Series(point_keys(df), index=df.index)
    return df[~keys.duplicated(keep="last")]


def fit_exponent(n, y) -> tuple[float, float]:
    """Least-squares slope of log y against log n, with its standard error (NaN if < 2 points)."""
    return fit_loglog(n, y)


def _samples(r) -> list[float]:
    """A row's timing samples (per-round times), or its median alone for rows without them."""
    raw = r.get("time_raw_ms")
    if isinstance(raw, (list, tuple)) and raw:
        return [float(x) for x in raw]
    return [float(r["time_ms"])] if r.get("time_ms") is not None and math.isfinite(r["time_ms"]) else []


def _ci(r) -> tuple[float, float]:
    """A row's interval for its median time; a row without one (older files) is its median. An
    interval of less than 95% coverage (too few rounds) cannot resolve a comparison: infinite."""
    cov = r.get("time_ci_coverage")
    if isinstance(cov, (int, float)) and cov < CONFIDENCE:
        return -math.inf, math.inf
    ci = r.get("time_ci_ms")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(x is not None for x in ci):
        return float(ci[0]), float(ci[1])
    t = float(r["time_ms"])
    return t, t


def paired_ratio(row, base) -> tuple[float, float, float, float] | None:
    """(median, lower, upper, coverage) of `row`'s time over `base`'s, round by round: the two
    points were timed in the same rounds of one group (same `group_id`), so each round gives one
    ratio in which a load that slowed that round cancels. An interval for the median ratio of
    95% coverage where there are 6 or more rounds; with fewer, [min, max] and its real coverage
    (below 95%: such an interval decides nothing). None when the rows were not measured together."""
    gid = row.get("group_id")
    if not isinstance(gid, str) or gid != base.get("group_id"):
        return None
    ids_a, ids_b = row.get("time_round_ids"), base.get("time_round_ids")
    ta, tb = row.get("time_raw_ms"), base.get("time_raw_ms")
    if not all(isinstance(x, (list, tuple)) for x in (ids_a, ids_b, ta, tb)):
        return None
    by_round = dict(zip(ids_b, tb))
    ratios = sorted(t / by_round[i] for i, t in zip(ids_a, ta) if i in by_round and by_round[i] > 0)
    if len(ratios) < 2:
        return None
    m = len(ratios)
    med = ratios[m // 2] if m % 2 else (ratios[m // 2 - 1] + ratios[m // 2]) / 2
    lo, hi, cov = median_ci(ratios)
    return med, lo, hi, cov


def _scaled_samples(r, ref: float | None) -> list[float]:
    """A row's samples in the units of its length's reference: what they would have been had the
    machine run at `ref` GFLOP/s instead of the rate measured in the same rounds."""
    peak = r.get("matmul_peak_gflops")
    scale = peak / ref if ref and isinstance(peak, (int, float)) and peak == peak and peak > 0 else 1.0
    return [t * scale for t in _samples(r)]


def summary(df: pd.DataFrame, baseline: str = "full", min_fit_len: int = 1024) -> pd.DataFrame:
    """Per variant and configuration: fitted time and memory exponents (lengths >= min_fit_len
    where there are at least 3 such, else all) with an interval for the time exponent, and where
    the variant becomes faster than `baseline` of the same configuration.

    The crossover is decided per length: from the round-by-round ratio to the baseline and its
    95% interval where the two points were timed in the same rounds (faster when the interval is
    below 1, slower when above, else unresolved), else from the two points' own intervals
    (overlapping: unresolved). `faster_than_<baseline>_from` is the length from which the
    variant is faster at every longer length, set only where the data resolves it;
    `crossover` says it in words, as a range ("between 512 and 1024") where it does not. Rows of
    different configurations (heads, batch, mode, ...) are never fitted together: their labels are
    told apart first (`label_series`). Points measured while the machine was busy are counted in
    `loaded`; a point flagged as a measurement fault (a rate above the machine's peak) is neither
    fitted nor decides a crossover. The time exponent is fitted to times scaled by each length's
    reference rate (the matmul timed in the same rounds), so a length measured while the whole
    machine ran slower does not bend the fit; `time_exponent_raw` is the fit to the unscaled
    medians."""
    df = label_series(latest(df))
    faulty = df.get("fault", pd.Series(None, index=df.index, dtype=object)).apply(
        lambda f: isinstance(f, str) and bool(f)
    )
    ok = df[(df["status"] == "ok") & ~faulty]
    points: dict = {}  # (label) -> {n: row}, and (config, base label) -> {n: row}
    for r in ok.to_dict("records"):
        points.setdefault(r["label"], {})[int(r["seq_len"])] = r
        points.setdefault((config_key(r), r.get("base_label", r["label"])), {})[int(r["seq_len"])] = r
    cross_col = f"faster_than_{baseline}_from"
    out = []
    for label, g in df.groupby("label", sort=False):
        pts = points.get(label, {})
        first = g.iloc[0].to_dict()
        is_base = first.get("base_label", label) == baseline
        base = {} if is_base else points.get((config_key(first), baseline), {})
        cross, text = _crossover(pts, base) if base else (None, "" if is_base else "-")
        faults = int(faulty[g.index].sum())
        points_text = ", ".join(f"{k} {v}" for k, v in g["status"].value_counts().to_dict().items())
        out.append(
            {
                "label": label,
                **_fits(pts, min_fit_len),
                cross_col: cross,
                "crossover": text,
                "loaded": int(g.get("loaded", pd.Series(False, index=g.index)).fillna(False).astype(bool).sum()),
                "points": points_text + (f" ({faults} a measurement fault, not fitted)" if faults else ""),
            }
        )
    return pd.DataFrame(out)


def _fits(pts: dict, min_fit_len: int) -> dict:
    """The log-log fits of one variant's ok points: time (scaled by each length's reference rate,
    with its bootstrap interval, and unscaled) and memory (a decoding step's cache)."""
    lens = sorted(pts)
    fit_lens = [n for n in lens if n >= min_fit_len] if sum(n >= min_fit_len for n in lens) >= 3 else lens
    raw_e, _ = fit_loglog(fit_lens, [pts[n]["time_ms"] for n in fit_lens])
    peaks = [pts[n].get("matmul_peak_gflops") for n in fit_lens]
    good = peaks and all(isinstance(p, (int, float)) and p == p and p > 0 for p in peaks)
    ref = float(np.median(peaks)) if good else None
    scaled = [_scaled_samples(pts[n], ref) for n in fit_lens]
    te, tse = fit_loglog(fit_lens, [float(np.median(x)) if x else math.nan for x in scaled])
    lo_e, hi_e = exponent_ci(fit_lens, scaled)
    # a decoding step's memory is its cache (the step's own peak is a row of scratch)
    decode = bool(fit_lens) and all(pts[n].get("mode") == "decode" for n in fit_lens)
    me, mse = fit_loglog(fit_lens, [pts[n].get("cache_bytes" if decode else "peak_mem_bytes") for n in fit_lens])
    return {
        "time_exponent": te,
        "time_exponent_se": tse,
        "time_exponent_lo": lo_e,
        "time_exponent_hi": hi_e,
        "time_exponent_raw": raw_e,
        "mem_exponent": me,
        "mem_exponent_se": mse,
        "fit_from": int(min(fit_lens)) if fit_lens else None,
    }


def _crossover(pts: dict, base: dict) -> tuple[int | None, str]:
    """(the length from which the variant is faster than the baseline at every longer length, or
    None; the same in words, as a range where the data cannot place it)."""
    common = [n for n in sorted(pts) if n in base]
    verdicts = []
    for n in common:
        pr = paired_ratio(pts[n], base[n])
        if pr is None:
            verdicts.append(verdict(_ci(pts[n]), _ci(base[n])))
            continue
        _, lo_r, hi_r, cov = pr
        resolved = cov >= CONFIDENCE
        verdicts.append("faster" if resolved and hi_r < 1 else "slower" if resolved and lo_r > 1 else "unresolved")
    lo, hi = crossover(common, verdicts)
    if hi is None:
        return None, "-"
    i = common.index(hi)
    before = common[i - 1] if i > 0 else None
    if (lo is None and i == 0) or (lo is not None and lo == before):
        return hi, str(hi)
    return None, f"<= {hi}" if lo is None else f"between {lo} and {hi}"


def label_series(df: pd.DataFrame) -> pd.DataFrame:
    """When rows from different configurations are mixed (fwd and fwdbwd, two dtypes, ...), make
    the differing fields part of each label, so that no two configurations share a line."""
    varying = [c for c in CONFIG_FIELDS if c in df.columns and df[c].astype(str).nunique() > 1]
    if not varying:
        return df
    df = df.copy()
    if "base_label" not in df:  # the label as measured; kept so that this function is idempotent
        df["base_label"] = df["label"]
    df["label"] = (
        df["base_label"]
        + " ["
        + df[varying].astype(str).apply(lambda r: ", ".join(f"{c}={v}" for c, v in zip(varying, r)), axis=1)
        + "]"
    )
    return df
