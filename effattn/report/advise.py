"""`advise`: which variant to use at a length, a memory budget and an error tolerance, from
measured rows.

For one configuration (device, dtype, batch, heads, head_dim, causal, mode, level, ...) each
variant gets an `Estimate` at the asked length: its measured point where there is one, else a
figure from its measured points - interpolated between the two lengths around it, or extrapolated
past the longest from the local scaling - with an interval that says how far off the estimate may
be. `choose` then ranks the variants that meet every constraint by time and gives every other one
the reason it is out. The decision map (`effattn.report.decision`) is `choose` asked over a grid of
lengths and budgets (or tolerances).

How wide an extrapolated interval is: the log-log line through the longest lengths is refitted
to resampled round times (the measurement noise), and widened by how much the local exponent
still moves - the slope between the last two lengths against the slope over the last three, times
how far past the longest length the estimate reaches. A variant measured at one length only, or
asked for more than `MAX_EXTRAPOLATION` times past its longest length, gets no estimate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ..errors import EffattnError
from ..stats import CONFIDENCE, median_ci
from ..store import CONFIG_FIELDS, config_key

#: how far past the longest measured length an estimate may reach
MAX_EXTRAPOLATION = 16
#: how many of the longest lengths the extrapolating line is fitted to
FIT_POINTS = 3
#: the configuration fields a user may choose by (mode has an option of its own)
FILTER_FIELDS = tuple(f for f in CONFIG_FIELDS if f != "mode")
#: the label whose error against itself is 0 by definition
BASELINE = "full"


class AdviseError(EffattnError):
    """Constraints or files that cannot be answered (the CLI prints it in one line, exit 2)."""


@dataclass(frozen=True)
class Constraints:
    seq_len: int
    mode: str = "fwd"
    memory_budget_bytes: int | None = None
    max_error: float | None = None
    #: configuration field -> the value asked for (`FILTER_FIELDS`)
    filters: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.seq_len, int) or self.seq_len <= 0:
            raise AdviseError(f"the sequence length must be a positive integer, got {self.seq_len!r}")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes <= 0:
            raise AdviseError(f"the memory budget must be > 0 bytes, got {self.memory_budget_bytes}")
        e = self.max_error
        if e is not None and not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0):
            raise AdviseError(f"the error tolerance must be a finite number >= 0, got {e!r}")
        unknown = set(self.filters) - set(FILTER_FIELDS)
        if unknown:
            raise AdviseError(f"no configuration field {sorted(unknown)[0]!r} (fields: {', '.join(FILTER_FIELDS)})")


@dataclass
class Estimate:
    """A variant's figures at one length: measured, or estimated from its measured lengths."""

    label: str
    time_ms: float
    time_ms_interval: tuple[float, float]
    #: inputs plus peak, the quantity `bench --memory-budget` bounds (None: not measured)
    memory_bytes: float | None
    peak_mem_bytes: float | None
    rel_err: float | None
    extrapolated: bool
    #: where the figures come from, in words ("measured", "extrapolated from n = 2048..8192")
    basis: str
    #: the length the error figure was measured at (an estimate takes the nearest measured one)
    error_at: int | None = None
    loaded: bool = False

    def as_dict(self) -> dict:
        """As JSON takes it: a bound that is not finite (no interval) is null."""
        d = asdict(self)
        d["time_ms_interval"] = [x if math.isfinite(x) else None for x in self.time_ms_interval]
        return d


@dataclass
class Advice:
    constraints: Constraints
    config: dict
    candidates: list[Estimate]
    excluded: list[dict]
    #: candidates whose time interval overlaps the recommended one's: the data cannot order them
    tied: list[str]

    @property
    def recommended(self) -> str | None:
        return self.candidates[0].label if self.candidates else None

    def as_dict(self) -> dict:
        c = self.constraints
        return {
            "seq_len": c.seq_len,
            "mode": c.mode,
            "memory_budget_bytes": c.memory_budget_bytes,
            "max_error": c.max_error,
            "config": self.config,
            "recommended": self.recommended,
            "tied_with_recommended": self.tied,
            "candidates": [e.as_dict() for e in self.candidates],
            "excluded": self.excluded,
        }


# ---------------------------------------------------------------------------------- configuration
def select_config(df: pd.DataFrame, mode: str, filters: dict) -> tuple[pd.DataFrame, dict]:
    """The rows of one configuration: `mode` and `filters` applied, and a refusal, naming the
    fields that differ, where more than one configuration is left."""
    if df.empty:
        raise AdviseError("the files hold no timing points")
    modes = sorted(df["mode"].dropna().astype(str).unique())
    rows = df[df["mode"].astype(str) == mode]
    if rows.empty:
        raise AdviseError(f"no {mode} points in the files (they hold {', '.join(modes) or 'no mode'})")
    for f, want in filters.items():
        have = rows[f].map(lambda v: str(_canon(v)))
        keep = rows[have == str(_canon(want))]
        if keep.empty:
            seen = ", ".join(sorted({str(v) for v in have}))
            raise AdviseError(f"no {mode} points with {f} = {want} (the files hold {f} = {seen})")
        rows = keep
    keys = pd.Series([config_key(r) for r in rows.to_dict("records")], index=rows.index)
    if keys.nunique() > 1:
        varying = [f for f in CONFIG_FIELDS if rows[f].map(lambda v: str(_canon(v))).nunique() > 1]
        choices = "; ".join(
            f"--{f.replace('_', '-')} " + "/".join(sorted({str(_canon(v)).replace("None", "none") for v in rows[f]}))
            for f in varying
        )
        raise AdviseError(f"the files mix {keys.nunique()} configurations of {mode} points; choose one: {choices}")
    first = rows.iloc[0]
    config = {f: _canon(first[f]) for f in CONFIG_FIELDS if f in rows and _canon(first[f]) is not None}
    return rows, config


def _canon(v):
    """A field's value as compared: numbers as numbers, booleans as booleans, the rest as text."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
        return int(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


# ---------------------------------------------------------------------------------- estimates
def estimates(rows: pd.DataFrame, seq_len: int, draws: int = 400) -> tuple[list[Estimate], list[dict]]:
    """Each variant of one configuration at `seq_len`: an Estimate, or {"label", "reason"} for a
    variant that has none (it failed there or before, or has too little data). `draws`: the
    resamples an extrapolated interval is made from (0: the curvature part of it alone)."""
    got, out = [], []
    for label, g in rows.groupby("label", sort=True):
        e = _estimate(label, g, seq_len, draws)
        (got if isinstance(e, Estimate) else out).append(e)
    return got, out


def _ok_points(g: pd.DataFrame) -> dict[int, dict]:
    time = pd.to_numeric(g["time_ms"], errors="coerce")
    ok = g[(g["status"] == "ok") & time.gt(0) & np.isfinite(time)]
    fault = ok["fault"].map(lambda f: isinstance(f, str) and bool(f)) if "fault" in ok else False
    ok = ok[~fault] if isinstance(fault, pd.Series) else ok
    return {int(r["seq_len"]): r for r in ok.to_dict("records")}


def _short(reason, limit: int = 70) -> str:
    text = " ".join(str(reason).split()) if isinstance(reason, str) else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _estimate(label: str, g: pd.DataFrame, n: int, draws: int):
    at = g[g["seq_len"] == n]
    if len(at):
        r = at.iloc[-1].to_dict()
        if r["status"] != "ok":
            why = f": {_short(r.get('reason'))}" if _short(r.get("reason")) else ""
            return {"label": label, "reason": f"{r['status']} at n = {n}{why}"}
        pts = _ok_points(at)
        if n not in pts:
            return {"label": label, "reason": f"its point at n = {n} has no usable time (a measurement fault)"}
        return _measured(label, pts[n], n)
    pts = _ok_points(g)
    lens = sorted(pts)
    # a failure counts where nothing longer (and shorter than n) ran ok since: an error at 1k
    # says nothing against ok points at 2k-16k
    after = max([m for m in lens if m < n], default=0)
    failed = g[g["status"].isin(["oom", "timeout", "error", "unsupported"]) & g["seq_len"].between(after + 1, n - 1)]
    if len(failed):
        r = failed.sort_values("seq_len").iloc[0].to_dict()
        return {"label": label, "reason": f"{r['status']} already at n = {int(r['seq_len'])}, shorter than {n}"}
    if not lens:
        statuses = ", ".join(sorted(set(g["status"].astype(str))))
        return {"label": label, "reason": f"no ok point to estimate from (its points: {statuses})"}
    if len(lens) < 2:
        return {"label": label, "reason": f"measured at one length only (n = {lens[0]}): nothing to fit"}
    if n > lens[-1] * MAX_EXTRAPOLATION:
        return {
            "label": label,
            "reason": f"not measured near n = {n} (longest {lens[-1]}; estimates reach "
            f"{MAX_EXTRAPOLATION}x): measure it",
        }
    if n < lens[0]:
        return {"label": label, "reason": f"not measured at or below n = {n} (shortest {lens[0]})"}
    if n > lens[-1] and len(lens) < FIT_POINTS:
        return {
            "label": label,
            "reason": f"measured at {len(lens)} lengths only, up to {lens[-1]}: extrapolating needs "
            f"{FIT_POINTS} (to see whether the exponent still moves)",
        }
    return _interpolated(label, pts, n) if n < lens[-1] else _extrapolated(label, pts, n, draws)


def _finite(x) -> float | None:
    """x as a float where it is a finite number (not a string, NaN or None), else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _memory(r: dict) -> tuple[float | None, float | None]:
    """(inputs + peak, peak); inputs + peak is None where the row does not hold the inputs' size
    (files older than the field): the budget cannot be judged on the peak alone."""
    peak, inputs = _finite(r.get("peak_mem_bytes")), _finite(r.get("input_bytes"))
    if peak is None or peak < 0:
        return None, None
    if inputs is None or inputs < 0:
        return None, peak
    return peak + inputs, peak


def _error(r: dict, label: str) -> float | None:
    if (r.get("base_label") or label) == BASELINE:
        return 0.0
    e = _finite(r.get("rel_err_vs_full"))
    return e if e is not None and e >= 0 else None


def _interval(r: dict) -> tuple[float, float]:
    """The row's 95% interval for its median time: its own, else one from its round times; an
    interval of less than 95% coverage (too few rounds) orders nothing: (0, inf)."""
    t = float(r["time_ms"])
    cov = _finite(r.get("time_ci_coverage"))
    ci = r.get("time_ci_ms")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(x) is not None for x in ci):
        if cov is not None and cov < CONFIDENCE:
            return 0.0, math.inf
        return float(min(ci[0], t)), float(max(ci[1], t))
    raw = _raw(r)
    if len(raw) > 1:
        lo, hi, cov = median_ci(list(raw))
        if cov < CONFIDENCE:
            return 0.0, math.inf
        return min(lo, t), max(hi, t)
    return 0.0, math.inf  # a single figure: no interval at all


def _measured(label: str, r: dict, n: int) -> Estimate:
    mem, peak = _memory(r)
    return Estimate(label, float(r["time_ms"]), _interval(r), mem, peak, _error(r, label), False, "measured",
                    error_at=n, loaded=bool(r.get("loaded")))  # fmt: skip


def _nearest_error(pts: dict, n: int, label: str) -> tuple[float | None, int | None]:
    """The error measured at the length nearest to n (in log n); approximations' error is not
    fitted: it is a property of the pattern more than of the length."""
    have = [m for m in pts if _error(pts[m], label) is not None]
    if not have:
        return None, None
    m = min(have, key=lambda m: (abs(math.log(m / n)), -m))
    return _error(pts[m], label), m


def _interpolated(label: str, pts: dict, n: int) -> Estimate:
    """Between the two measured lengths around n: log-log straight line through both, its interval
    through the two intervals' ends."""
    lens = sorted(pts)
    a = max(m for m in lens if m < n)
    b = min(m for m in lens if m > n)
    w = math.log(n / a) / math.log(b / a)
    geo = lambda x, y: math.exp((1 - w) * math.log(x) + w * math.log(y))
    ra, rb = pts[a], pts[b]
    (alo, ahi), (blo, bhi) = _interval(ra), _interval(rb)
    t = geo(float(ra["time_ms"]), float(rb["time_ms"]))
    bounded = all(0 < x < math.inf for x in (alo, ahi, blo, bhi))
    interval = (geo(alo, blo), geo(ahi, bhi)) if bounded else (0.0, math.inf)
    mem_a, peak_a = _memory(ra)
    mem_b, peak_b = _memory(rb)
    mem = geo(mem_a, mem_b) if mem_a and mem_b else None
    peak = geo(peak_a, peak_b) if peak_a and peak_b else None
    err, err_at = _nearest_error(pts, n, label)
    loaded = bool(ra.get("loaded") or rb.get("loaded"))
    return Estimate(label, t, interval, mem, peak, err, True,
                    f"interpolated between n = {a} and {b}", err_at, loaded)  # fmt: skip


def _extrapolated(label: str, pts: dict, n: int, draws: int = 400, seed: int = 0) -> Estimate:
    lens = sorted(pts)[-FIT_POINTS:]
    x = np.log(np.asarray(lens, float))
    x0 = math.log(n)
    t_med = np.log([float(pts[m]["time_ms"]) for m in lens])
    slope, icpt = np.polyfit(x, t_med, 1)
    t = math.exp(icpt + slope * x0)
    # the noise: refit to resampled round times
    rng = np.random.default_rng(seed)
    raws = [_raw(pts[m]) for m in lens]
    preds = [t]
    for _ in range(draws):
        y = np.log([float(np.median(rng.choice(s, size=len(s)))) for s in raws])
        b, a = np.polyfit(x, y, 1)
        preds.append(math.exp(a + b * x0))
    lo, hi = np.quantile(preds, [0.025, 0.975])
    # the curvature: how far the local exponent still moves
    spread = _slope_spread(x, t_med, slope) * max(0.0, x0 - x[-1])
    lo, hi = min(lo, t) * math.exp(-spread), max(hi, t) * math.exp(spread)
    mems = [_memory(pts[m]) for m in lens]
    mem = peak = None
    if all(mm[0] for mm in mems):
        inputs = np.asarray([mm[0] - mm[1] for mm in mems])
        peaks = np.log([max(mm[1], 1.0) for mm in mems])
        b, a = np.polyfit(x, peaks, 1)
        peak = math.exp(a + b * x0)
        mem = peak + float(inputs[-1]) * n / lens[-1]  # q, k, v and the output grow with n
    err, err_at = _nearest_error(pts, n, label)
    loaded = any(bool(pts[m].get("loaded")) for m in lens)
    basis = f"extrapolated from n = {lens[0]}..{lens[-1]}"
    return Estimate(label, t, (float(lo), float(hi)), mem, peak, err, True, basis, err_at, loaded)


def _raw(r: dict) -> np.ndarray:
    raw = r.get("time_raw_ms")
    good = [x for x in (_finite(v) for v in raw) if x is not None and x > 0] if isinstance(raw, (list, tuple)) else []
    return np.asarray(good or [float(r["time_ms"])])


def _slope_spread(x: np.ndarray, y: np.ndarray, slope: float) -> float:
    """How much the local log-log slope differs from the fitted one: the slope between the last
    two lengths against the fit's (0 with two points, where there is nothing to compare)."""
    if len(x) < 3:
        return 0.0
    last = (y[-1] - y[-2]) / (x[-1] - x[-2])
    return abs(last - slope)


# ---------------------------------------------------------------------------------- the choice
def judge(e: Estimate, budget: int | None, max_error: float | None) -> str | None:
    """Why `e` does not meet the constraints, or None when it does."""
    if budget is not None:
        if e.memory_bytes is None:
            return "its memory was not measured"
        if e.memory_bytes > budget:
            est = "estimated " if e.extrapolated else ""
            return f"over the memory budget: {est}{_size(e.memory_bytes)} (inputs + peak) > {_size(budget)}"
    if max_error is not None:
        if e.rel_err is None:
            return "its error against full was not measured (a sweep run with --no-error)"
        if e.rel_err > max_error:
            at = f" (measured at n = {e.error_at})" if e.extrapolated and e.error_at else ""
            return f"over the error tolerance: {e.rel_err:.3g}{at} > {max_error:g}"
    return None


def choose(c: Constraints, found: list[Estimate], missing: list[dict], config: dict, others=()) -> Advice:
    """Rank the estimates that meet the constraints by time; every other variant with its reason.
    `others`: labels of the files that were not measured in this configuration at all."""
    ok, out = [], list(missing)
    for e in found:
        why = judge(e, c.memory_budget_bytes, c.max_error)
        (ok.append(e) if why is None else out.append({"label": e.label, "reason": why}))
    ok.sort(key=lambda e: (e.time_ms, e.label))
    out += [{"label": lab, "reason": "not measured in this configuration"} for lab in sorted(others)]
    tied = []
    if ok:
        lo0, hi0 = ok[0].time_ms_interval
        tied = [e.label for e in ok[1:] if e.time_ms_interval[0] <= hi0]
    return Advice(c, config, ok, sorted(out, key=lambda d: d["label"]), tied)


def advise(df: pd.DataFrame, c: Constraints) -> Advice:
    """The answer for one set of constraints, from the loaded rows of timing points."""
    if "probe" in df:  # find-max-len probes answer "does it fit", not "how fast"
        df = df[df["probe"].isna()]
    rows, config = select_config(df, c.mode, c.filters)
    found, missing = estimates(rows, c.seq_len)
    others = set(df["label"]) - set(rows["label"])
    return choose(c, found, missing, config, others)


def _size(b: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{int(b)} B"
