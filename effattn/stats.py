"""The statistics behind every conclusion effattn prints: intervals for a point's median time,
for a fitted exponent and for a crossover, and the test `effattn compare` decides by.

Nothing here knows about sweeps or files: it takes numbers and returns numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(lower, upper, coverage): a distribution-free interval for the median from order statistics.

    With m samples, the interval [x_(j), x_(m+1-j)] covers the median with probability
    1 - 2 P(Binomial(m, 1/2) < j); j is the largest rank that still gives `confidence`. With too
    few samples for that (m < 6 at 95%), the interval is [min, max] and its real coverage
    (1 - 2^(1-m)) is returned, so a caller can say how sure it is."""
    x = np.sort(np.asarray([s for s in samples if s is not None and math.isfinite(s)], dtype=float))
    m = len(x)
    if m == 0:
        return math.nan, math.nan, 0.0
    if m == 1:
        return float(x[0]), float(x[0]), 0.0
    from scipy.stats import binom

    best_j, coverage = 1, 1 - 2 * binom.cdf(0, m, 0.5)
    for j in range(2, m // 2 + 1):
        cov = 1 - 2 * binom.cdf(j - 1, m, 0.5)
        if cov < confidence:
            break
        best_j, coverage = j, cov
    return float(x[best_j - 1]), float(x[m - best_j]), float(coverage)


def slower_test(base: Sequence[float], new: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "new is slower than base" (times: larger is slower).
    NaN when either side has no sample."""
    from scipy.stats import mannwhitneyu

    a = [x for x in base if x is not None and math.isfinite(x)]
    b = [x for x in new if x is not None and math.isfinite(x)]
    if not a or not b:
        return math.nan
    return float(mannwhitneyu(b, a, alternative="greater").pvalue)


def min_p_value(n_base: int, n_new: int) -> float:
    """The smallest one-sided p-value a rank test can reach with these sample sizes (every new
    sample above every base sample): 1 / C(n_base + n_new, n_base)."""
    return 1.0 / math.comb(n_base + n_new, n_base) if n_base and n_new else 1.0


def fit_loglog(n, y) -> tuple[float, float]:
    """Least-squares slope of log y against log n, with its standard error (NaN if < 2 points)."""
    n, y = np.asarray(n, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0)
    n, y = n[ok], y[ok]
    if len(n) < 2 or len(set(n)) < 2:
        return math.nan, math.nan
    x, z = np.log(n), np.log(y)
    A = np.vstack([x, np.ones_like(x)]).T
    coef, *_ = np.linalg.lstsq(A, z, rcond=None)
    if len(n) > 2:
        resid = z - A @ coef
        se = math.sqrt((resid @ resid) / (len(n) - 2) / ((x - x.mean()) ** 2).sum())
    else:
        se = math.nan
    return float(coef[0]), se


def exponent_ci(
    n: Sequence[int],
    samples: Sequence[Sequence[float]],
    confidence: float = CONFIDENCE,
    draws: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """An interval for the log-log slope of median time against n, from the measurement noise:
    each length's samples are resampled (bootstrap), the medians refitted, and the central
    `confidence` of the slopes kept. It says how much the exponent could move if the same sweep
    were measured again; how well a straight line fits is the fit's standard error, reported
    apart (with three lengths a Student t interval on it spans +-12.7 standard errors, which says
    nothing). (NaN, NaN) with fewer than two lengths."""
    n = list(n)
    if len(set(n)) < 2:
        return math.nan, math.nan
    meds = [float(np.median(s)) if len(s) else math.nan for s in samples]
    slope, se = fit_loglog(n, meds)
    if not math.isfinite(slope):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    slopes = []
    arrays = [np.asarray(s, float) for s in samples]
    for _ in range(draws):
        m = [float(np.median(rng.choice(a, size=len(a)))) if len(a) else math.nan for a in arrays]
        s, _ = fit_loglog(n, m)
        if math.isfinite(s):
            slopes.append(s)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(slopes, [tail, 1 - tail]) if slopes else (slope, slope)
    return float(min(lo, slope)), float(max(hi, slope))


def crossover(lengths: Sequence[int], verdicts: Sequence[str]) -> tuple[int | None, int | None]:
    """Where a variant becomes faster than the baseline, from per-length verdicts ("faster",
    "slower", "unresolved": the two intervals overlap), lengths increasing.

    Returns (lo, hi): the variant is faster, resolved, at every length >= hi; the crossover lies
    after lo (None: at or before the first length). lo == None and hi == first length: faster
    everywhere measured. hi == None: not faster at the longest length (no crossover). When the
    lengths between the last resolved "slower" and hi are unresolved, lo < the length before hi:
    the data cannot place the crossover more precisely than (lo, hi]. lo is always the last
    resolved "slower" before hi."""
    lengths, verdicts = list(lengths), list(verdicts)
    if not lengths or verdicts[-1] != "faster":
        return None, None
    b = len(verdicts) - 1
    while b > 0 and verdicts[b - 1] == "faster":
        b -= 1
    if b == 0:
        return None, lengths[0]
    a = b - 1
    # back to the last resolved "slower": a "faster" before an unresolved length does not place
    # the crossover (the unresolved one may be slower)
    while a >= 0 and verdicts[a] != "slower":
        a -= 1
    return (lengths[a] if a >= 0 else None), lengths[b]


def verdict(ci_variant: tuple[float, float], ci_base: tuple[float, float]) -> str:
    """Faster, slower or unresolved, from two intervals for median times."""
    (lo_v, hi_v), (lo_b, hi_b) = ci_variant, ci_base
    if not all(math.isfinite(x) for x in (lo_v, hi_v, lo_b, hi_b)):
        return "unresolved"
    if hi_v < lo_b:
        return "faster"
    if lo_v > hi_b:
        return "slower"
    return "unresolved"
