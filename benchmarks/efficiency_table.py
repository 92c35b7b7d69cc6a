"""The table of benchmarks/efficiency.py (`efficiency.py table DIR [--before DIR]`): each variant's
useful GFLOP/s as a fraction of the matmul peak measured in the same rounds, beside its target, and
the short-length training ratio. Reads the rows with effattn's reader."""

from __future__ import annotations

from pathlib import Path

from effattn.store import ResultsFileError, read_results

EXACT = ["full", "sparse", "sparse:pattern=fixed", "bigbird", "sliding_window", "flex:mask=sliding_window"]
APPROX = ["linear", "performer", "linformer", "nystrom", "moba"]

#: the targets (fraction of the peak; the short comparison: time over full's, at most)
TARGETS = {
    ("sparse", "fwd"): 0.40,
    ("bigbird", "fwd"): 0.55,
    ("sliding_window", "fwd"): 0.60,
    ("sparse:pattern=fixed", "fwd"): 0.60,
    ("sparse", "fwdbwd"): 0.40,
    ("bigbird", "fwdbwd"): 0.55,
    ("sliding_window", "fwdbwd"): 0.55,
    ("sparse:pattern=fixed", "fwdbwd"): 0.55,
}
SHORT_TARGET = 1.2
FILES = {"fwd": "fwd.jsonl", "fwdbwd": "fwdbwd.jsonl", "short": "short.jsonl"}


def _rows(path: Path) -> list[dict]:
    """The ok timing rows of a file (effattn's reader: torn or foreign lines are left out), or []."""
    try:
        rows = read_results(str(path))[0]
    except ResultsFileError:
        return []
    return [r for r in rows if "variant" in r and r.get("status") == "ok"]


def _label(r: dict) -> str:
    opts = r.get("options") or {}
    return r["variant"] + "".join(f":{k}={v}" for k, v in sorted(opts.items()))


def load_run(d: Path) -> dict:
    """{(label, mode, n): row} of the ok rows of one run directory (the latest row per point)."""
    if not d.is_dir():
        raise SystemExit(f"efficiency: {d} is not a directory of efficiency results")
    got = {}
    for name, fname in FILES.items():
        for r in _rows(d / fname):
            key = (_label(r), "short" if name == "short" else r.get("mode", name), int(r["seq_len"]))
            got[key] = r
    if not got:
        raise SystemExit(f"efficiency: {d} holds no measured rows ({', '.join(FILES.values())})")
    return got


def _frac(r: dict | None) -> str:
    if r is None:
        return "-"
    f = r.get("peak_fraction")
    return "n/a" if f is None else f"{f:.0%}"


def _basis(r: dict) -> str:
    """What a row's FLOPs count (rows from before the column existed: pairs when exact, else none)."""
    return r.get("flops_basis") or ("pairs" if r.get("exact") else "none")


def _short_ratio(run: dict, n: int) -> float | None:
    a, b = run.get(("full", "short", n)), run.get(("sliding_window:window=64", "short", n))
    return b["time_ms"] / a["time_ms"] if a and b else None


def table(d: Path, before: Path | None) -> str:
    after = load_run(d)
    prev = load_run(before) if before else {}
    runs = [("before", prev), ("after", after)] if before else [("", after)]
    cols = []
    for mode, n in sorted({(m, n) for (_, m, n) in after if m != "short"}, key=lambda x: (x[0] != "fwd", x[1])):
        cols.append((mode, n))
    labels = [x for x in EXACT + APPROX if any(k[0] == x for k in after)]
    labels += sorted({k[0] for k in after if k[1] != "short"} - set(labels))
    head = ["variant", "basis"] + [f"{m} {n // 1024 if n >= 1024 else n}{'k' if n >= 1024 else ''}" for m, n in cols]
    head.append("target")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for lab in labels:
        basis = next((_basis(r) for k, r in after.items() if k[0] == lab), "")
        cells = [f"`{lab}`", basis]
        for m, n in cols:
            cells.append(" → ".join(_frac(rr.get((lab, m, n))) for _, rr in runs))
        t = [f"{m} ≥ {TARGETS[(lab, m)]:.0%}" for m in ("fwd", "fwdbwd") if (lab, m) in TARGETS]
        cells.append(", ".join(t) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    peaks = sorted({round(r["matmul_peak_gflops"]) for r in after.values() if r.get("matmul_peak_gflops")})
    lines.append("")
    lines.append(
        f"Fractions of the fp32 matmul peak measured in the same rounds "
        f"({min(peaks)}-{max(peaks)} GFLOP/s in this run)."
        if peaks
        else ""
    )
    short_lens = sorted({n for (_, m, n) in after if m == "short"})
    if short_lens:
        lines.append("")
        lines.append(
            "Short-length training, batch 32, fwd+bwd: `sliding_window(64)` time / `full` time "
            f"(target ≤ {SHORT_TARGET}×)"
        )
        lines.append("")
        lines.append("| n | " + " | ".join(name or "ratio" for name, _ in runs) + " |")
        lines.append("|" + " --- |" * (len(runs) + 1))
        for n in short_lens:
            vals = [_short_ratio(rr, n) for _, rr in runs]
            lines.append(f"| {n} | " + " | ".join("-" if v is None else f"{v:.2f}×" for v in vals) + " |")
    return "\n".join(lines)
