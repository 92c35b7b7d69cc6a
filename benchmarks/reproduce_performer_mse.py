"""Performer's estimator against its closed form (Choromanski et al. 2021, Lemma 2 and Theorem 2).

For x, y in R^d and m positive random features phi(z) = exp(w.z - |z|^2 / 2) / sqrt(m) with
w ~ N(0, I) independent, the estimate phi(x).phi(y) of SM(x, y) = exp(x.y) is unbiased with

    MSE = (1/m) exp(|x + y|^2) SM(x, y)^2 (1 - exp(-|x + y|^2)),

and drawing the w orthogonal (blocks of d, rescaled to chi-distributed norms) lowers it.

This script estimates the MSE of effattn's own `performer` features by Monte Carlo: many seeds
(each seed is a fresh draw of the features), at fixed x and y, over a grid of |x| = |y| and m,
with iid and with orthogonal features, and prints the formula beside the measured MSE and its
95% interval. The estimate is read through the plugin's feature map (`PerformerAttention._phi`,
which scales its input by d^-1/4 and divides out a stabilising constant; both are undone here).

    python benchmarks/reproduce_performer_mse.py [--draws 4000] [--out results/reproductions/repro-performer-mse.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from effattn import create_attention


def estimate(attn, x, y) -> float:
    """phi(x).phi(y) through the plugin's feature map, for x, y already in the kernel's scale
    (the map divides by d^(1/4): pass x d^(1/4))."""
    d = x.shape[-1]
    w = attn.features(d).double()
    s = d**0.25
    fx, cx = attn._phi(x.view(1, 1, 1, d) * s, w, True)
    fy, cy = attn._phi(y.view(1, 1, 1, d) * s, w, True)
    return float((fx * fy).sum() * torch.exp(cx + cy).squeeze())


def closed_form(x, y, m: int) -> float:
    s2 = float((x + y).square().sum())
    sm = math.exp(float(x @ y))
    return math.exp(s2) * sm**2 * (1 - math.exp(-s2)) / m


def run(draws: int, d: int, norms, ms, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    u, v = u / u.norm(), v / v.norm()
    rows = []
    for r in norms:
        x, y = r * u, r * v
        sm = math.exp(float(x @ y))
        for m in ms:
            for orth in (False, True):
                errs = torch.tensor(
                    [
                        (estimate(create_attention("performer", num_features=m, seed=k, orthogonal=orth), x, y) - sm)
                        ** 2
                        for k in range(draws)
                    ],
                    dtype=torch.float64,
                )
                mse = float(errs.mean())
                half = 1.96 * float(errs.std()) / math.sqrt(draws)
                rows.append(
                    {
                        "norm": r,
                        "m": m,
                        "features": "orthogonal" if orth else "iid",
                        "draws": draws,
                        "sm": sm,
                        "mse": mse,
                        "mse_ci95": [mse - half, mse + half],
                        "formula": closed_form(x, y, m),
                    }
                )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=4000, help="seeds (feature draws) per grid point")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    if a.draws < 2 or a.dim < 1:
        ap.error("--draws must be >= 2 and --dim >= 1")
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.float64)
    rows = run(a.draws, a.dim, norms=(0.5, 1.0, 1.5), ms=(16, 64, 256))
    print(f"d = {a.dim}, {a.draws} draws per point, {time.perf_counter() - t0:.0f} s")
    print(f"{'|x|=|y|':>7} {'m':>4} {'features':>10} {'formula':>10} {'measured MSE [95%]':>30} {'within':>6}")
    for r in rows:
        lo, hi = r["mse_ci95"]
        inside = "yes" if lo <= r["formula"] <= hi else "no"
        inside = inside if r["features"] == "iid" else "-"
        print(
            f"{r['norm']:7.1f} {r['m']:4d} {r['features']:>10} {r['formula']:10.4g} "
            f"{r['mse']:10.4g} [{lo:8.4g}, {hi:8.4g}] {inside:>6}"
        )
    for r in rows:
        if r["features"] == "orthogonal":
            iid = next(x for x in rows if x["norm"] == r["norm"] and x["m"] == r["m"] and x["features"] == "iid")
            r["orthogonal_over_iid"] = r["mse"] / iid["mse"]
    print("orthogonal / iid MSE:", ", ".join(
        f"|x|={r['norm']} m={r['m']}: {r['orthogonal_over_iid']:.2f}" for r in rows if "orthogonal_over_iid" in r
    ))  # fmt: skip
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"dim": a.dim, "draws": a.draws, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
