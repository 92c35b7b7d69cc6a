"""Do a sweep's conclusions survive a busy machine? The default sweep, quiet and then under load.

    python benchmarks/repeatability.py [--src DIR] [--out-dir DIR] [--label NAME] [-- BENCH ARGS...]

1. runs `effattn bench` (the default sweep, or BENCH ARGS) on a quiet machine;
2. runs it again while a background load runs that this script starts and stops itself: one
   CPU-bound process (a busy loop on one core) working for 10 s and idling for 10 s, ended when
   the sweep ends;
3. prints how the loaded run's conclusions agree with the quiet run's: the ratios of each
   variant's time to `full` at each length (share within 10% and within 25%), the fitted time
   exponents (largest difference), and where each variant becomes faster than `full` (the same,
   or a range that contains the quiet run's).

`--src DIR` runs the sweep from another checkout of effattn (PYTHONPATH=DIR), so the same script
measures the code before and after a change; the analysis always uses this checkout's
`effattn.results.summary`. Targets (2-core machine): >= 80% of the ratios within 10%, every
exponent within 0.15, every crossover the same or a range containing the quiet one.
Never run it beside other heavy work (tests, other benchmarks): that is a load of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

LOAD = """
import time
on, off = {on}, {off}
while True:
    t = time.time() + on
    while time.time() < t:
        pass
    time.sleep(off)
"""


def run_bench(src: str, out: str, args: list[str]) -> float:
    import tempfile

    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    t0 = time.time()
    # from a neutral folder: `python -m` puts the working directory ahead of PYTHONPATH, so run
    # from a checkout it would measure that checkout's code whatever --src says
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run(
            [sys.executable, "-m", "effattn.cli", "bench", "--out", os.path.abspath(out), "--overwrite", *args],
            env=env,
            cwd=cwd,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return time.time() - t0


def ratios(df) -> dict:
    """Each variant's time over full's at each length: round by round where the two were timed
    in the same rounds (`effattn.results.paired_ratio`), else the ratio of their medians (rows of
    older versions)."""
    from effattn.results import paired_ratio

    ok = df[df["status"] == "ok"]
    full = {int(r["seq_len"]): r for r in ok[ok["label"] == "full"].to_dict("records")}
    out = {}
    for r in ok.to_dict("records"):
        n = int(r["seq_len"])
        if r["label"] != "full" and n in full:
            pr = paired_ratio(r, full[n])
            out[(r["label"], n)] = pr[0] if pr else r["time_ms"] / full[n]["time_ms"]
    return out


def by_length(quiet_path: str, loaded_path: str) -> dict:
    """Share of ratios within 10%, per length (short lengths are the noisiest)."""
    from effattn.results import load

    rq, rl = ratios(load(quiet_path)), ratios(load(loaded_path))
    out = {}
    for (label, n), v in rq.items():
        if (label, n) in rl:
            out.setdefault(n, []).append(abs(rl[(label, n)] / v - 1) <= 0.10)
    return {n: f"{sum(v)}/{len(v)}" for n, v in sorted(out.items())}


def crossover_of(row) -> tuple:
    """(lo, hi) of the crossover as the summary states it: '1024' -> (1024, 1024); 'between 512
    and 1024' -> (512, 1024); '<= 1024' -> (0, 1024); '-' -> (None, None)."""
    text = str(row["crossover"])
    if text in ("-", "", "nan"):
        return None, None
    if text.startswith("between"):
        a, b = text.split()[1], text.split()[3]
        return int(a), int(b)
    if text.startswith("<="):
        return 0, int(text.split()[1])
    return int(text), int(text)


def compare(quiet_path: str, loaded_path: str) -> dict:
    from effattn.results import load, summary

    q, lo = load(quiet_path), load(loaded_path)
    rq, rl = ratios(q), ratios(lo)
    common = [k for k in rq if k in rl]
    dev = {k: rl[k] / rq[k] - 1 for k in common}
    within10 = sum(abs(d) <= 0.10 for d in dev.values()) / max(1, len(dev))
    within25 = sum(abs(d) <= 0.25 for d in dev.values()) / max(1, len(dev))
    sq, sl = summary(q).set_index("label"), summary(lo).set_index("label")
    exps, crosses = {}, {}
    for label in sq.index:
        if label not in sl.index:
            continue
        exps[label] = (sq.loc[label, "time_exponent"], sl.loc[label, "time_exponent"])
        if label != "full":
            crosses[label] = (crossover_of(sq.loc[label]), crossover_of(sl.loc[label]))

    def consistent(quiet, loaded):
        (qa, qb), (la, lb) = quiet, loaded
        if qb is None or lb is None:
            return qb == lb
        if (la, lb) == (qa, qb):
            return True
        return la <= qb <= lb if la != lb else False  # a range that holds the quiet crossover

    exp_diff = {k: abs(b - a) for k, (a, b) in exps.items() if a == a and b == b}
    return {
        "points_compared": len(common),
        "ratios_within_10pct": within10,
        "ratios_within_25pct": within25,
        "worst_ratio_deviation": max(dev.items(), key=lambda kv: abs(kv[1])) if dev else None,
        "exponent_diff": exp_diff,
        "exponent_diff_max": max(exp_diff.values()) if exp_diff else None,
        "crossovers": {k: {"quiet": v[0], "loaded": v[1], "consistent": consistent(*v)} for k, v in crosses.items()},
        "crossovers_consistent": sum(consistent(*v) for v in crosses.values()),
        "crossovers_total": len(crosses),
        "loaded_points": int(lo.get("loaded", False).fillna(False).astype(bool).sum()) if "loaded" in lo else None,
    }


def _commit(src: str) -> str | None:
    r = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=ROOT, help="the effattn checkout whose sweep is measured")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "results", "repeatability"))
    p.add_argument("--label", default="run", help="a name for this measurement's files")
    p.add_argument("--on", type=float, default=10.0, help="seconds the load works")
    p.add_argument("--off", type=float, default=10.0, help="seconds the load idles")
    p.add_argument(
        "--no-load",
        action="store_true",
        help="run the second sweep quiet too: the agreement two quiet runs reach (the floor)",
    )
    p.add_argument("bench_args", nargs="*", help="arguments for effattn bench (after --)")
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    quiet = os.path.join(a.out_dir, f"{a.label}-quiet.jsonl")
    loaded = os.path.join(a.out_dir, f"{a.label}-loaded.jsonl")
    print(f"quiet sweep from {a.src} ...", flush=True)
    t_quiet = run_bench(a.src, quiet, a.bench_args)
    print(f"  {t_quiet:.0f} s", flush=True)
    if a.no_load:
        print("second quiet sweep ...", flush=True)
        t_loaded = run_bench(a.src, loaded, a.bench_args)
    else:
        print(f"loaded sweep (one busy core, {a.on:g} s on / {a.off:g} s off) ...", flush=True)
        load = subprocess.Popen([sys.executable, "-c", LOAD.format(on=a.on, off=a.off)])
        try:
            t_loaded = run_bench(a.src, loaded, a.bench_args)
        finally:
            load.kill()
            load.wait()
    print(f"  {t_loaded:.0f} s", flush=True)
    res = compare(quiet, loaded)
    res.update(
        src=a.src,
        src_commit=_commit(a.src),
        quiet_s=t_quiet,
        loaded_s=t_loaded,
        load=None if a.no_load else {"on_s": a.on, "off_s": a.off},
        bench_args=a.bench_args,
        by_length=by_length(quiet, loaded),
    )
    print(
        f"\nratios to full within 10%: {res['ratios_within_10pct']:.0%}, within 25%: "
        f"{res['ratios_within_25pct']:.0%} ({res['points_compared']} points; target >= 80% within 10%)"
    )
    print("  per length: " + ", ".join(f"{n}: {v}" for n, v in res["by_length"].items()))
    print(f"exponents: largest difference {res['exponent_diff_max']:.2f} (target <= 0.15)")
    for k, d in sorted(res["exponent_diff"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:24s} {d:.2f}")
    print(f"crossovers consistent: {res['crossovers_consistent']}/{res['crossovers_total']} (target: all)")
    for k, v in res["crossovers"].items():
        print(f"  {k:24s} quiet {v['quiet']}, loaded {v['loaded']}{'' if v['consistent'] else '   <- differs'}")
    if res["loaded_points"] is not None:
        print(f"points flagged as measured under load: {res['loaded_points']}")
    print(f"wall time: quiet {t_quiet:.0f} s, loaded {t_loaded:.0f} s")
    with open(os.path.join(a.out_dir, f"{a.label}-summary.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
