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

from .store import CONFIG_FIELDS, FIELD_DEFAULTS, describe_problems, point_key, read_results

COLUMNS = ["run_id", "label", "variant", "seq_len", "status", "reason", "time_ms", "time_iqr_ms", "noisy",
           "first_call_ms", "peak_mem_bytes", "retained_bytes", "gflops", "peak_fraction", "fault", "attended_pairs",
           "rel_err_vs_full", "cosine_vs_full", "rel_err_vs_own_dense", "backend", "device", "dtype", "batch",
           "heads", "head_dim", "causal", "mode", "level", "inputs", "seed", "probe"]


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
        for c in ("time_ms", "time_iqr_ms", "peak_mem_bytes", "retained_bytes", "gflops", "peak_fraction",
                  "rel_err_vs_full", "rel_err_vs_own_dense", "first_call_ms"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def point_keys(df: pd.DataFrame) -> list[tuple]:
    return [point_key(r) for r in df.to_dict("records")]


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The newest row of each point (file order), everything else dropped."""
    if df.empty:
        return df
    keys = pd.Series(point_keys(df), index=df.index)
    return df[~keys.duplicated(keep="last")]


def fit_exponent(n, y) -> tuple[float, float]:
    """Least-squares slope of log y against log n, with its standard error (NaN if < 2 points)."""
    n, y = np.asarray(n, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0)
    n, y = n[ok], y[ok]
    if len(n) < 2 or len(set(n)) < 2:
        return math.nan, math.nan
    x, z = np.log(n), np.log(y)
    A = np.vstack([x, np.ones_like(x)]).T
    coef, res, *_ = np.linalg.lstsq(A, z, rcond=None)
    if len(n) > 2:
        resid = z - A @ coef
        se = math.sqrt((resid @ resid) / (len(n) - 2) / ((x - x.mean()) ** 2).sum())
    else:
        se = math.nan
    return float(coef[0]), se


def summary(df: pd.DataFrame, baseline: str = "full", min_fit_len: int = 1024) -> pd.DataFrame:
    """Per variant and configuration: fitted time and memory exponents (lengths >= min_fit_len
    where there are at least 3 such, else all), and the crossover length from which it is faster
    than `baseline` of the same configuration. Rows of different configurations (heads, batch,
    mode, ...) are never fitted together: their labels are told apart first (`label_series`)."""
    df = label_series(latest(df))
    ok = df[df["status"] == "ok"]

    def base_for(label: str):
        """The baseline of the same configuration: `full [mode=fwd]` for `linear [mode=fwd]`."""
        suffix = label[label.index(" ["):] if " [" in label else ""
        b = ok[ok["label"] == baseline + suffix]
        return b.drop_duplicates("seq_len", keep="last").set_index("seq_len")["time_ms"] if len(b) else None

    out = []
    for label, g in df.groupby("label", sort=False):
        gk = g[g["status"] == "ok"].drop_duplicates("seq_len", keep="last").sort_values("seq_len")
        fit = gk[gk["seq_len"] >= min_fit_len] if (gk["seq_len"] >= min_fit_len).sum() >= 3 else gk
        te, tse = fit_exponent(fit["seq_len"], fit["time_ms"])
        me, mse = fit_exponent(fit["seq_len"], fit["peak_mem_bytes"])
        cross = None
        base = base_for(label)
        if base is not None and not label.startswith(baseline + " [") and label != baseline:
            common = [n for n in gk["seq_len"] if n in base.index]
            faster = [gk.set_index("seq_len").loc[n, "time_ms"] < base.loc[n] for n in common]
            for i, n in enumerate(common):
                if all(faster[i:]):
                    cross = int(n)
                    break
        statuses = g["status"].value_counts().to_dict()
        out.append({"label": label, "time_exponent": te, "time_exponent_se": tse, "mem_exponent": me,
                    "mem_exponent_se": mse, "fit_from": int(fit["seq_len"].min()) if len(fit) else None,
                    f"faster_than_{baseline}_from": cross,
                    "points": ", ".join(f"{k} {v}" for k, v in statuses.items())})
    return pd.DataFrame(out)


def label_series(df: pd.DataFrame) -> pd.DataFrame:
    """When rows from different configurations are mixed (fwd and fwdbwd, two dtypes, ...), make
    the differing fields part of each label, so that no two configurations share a line."""
    varying = [c for c in CONFIG_FIELDS if c in df.columns and df[c].astype(str).nunique() > 1]
    if not varying:
        return df
    df = df.copy()
    if "base_label" not in df:  # the label as measured; kept so that this function is idempotent
        df["base_label"] = df["label"]
    df["label"] = df["base_label"] + " [" + df[varying].astype(str).apply(
        lambda r: ", ".join(f"{c}={v}" for c, v in zip(varying, r)), axis=1) + "]"
    return df
