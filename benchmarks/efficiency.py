"""How close each implementation runs to this machine's limit: useful GFLOP/s as a fraction of the
fp32 matmul peak measured in the same rounds, per variant and mode, and the short-length training
comparison (batch 32, forward + backward, against `full`).

    python benchmarks/efficiency.py run --out-dir results/efficiency-cpu
    python benchmarks/efficiency.py table results/efficiency-cpu [--before results/efficiency-cpu-before]
    python benchmarks/efficiency.py bounds

`run` makes three sweeps with `effattn bench` (one process each, nothing else may run meanwhile):
forward at 4k, 8k and 16k; forward + backward at 8k; forward + backward at n = 128 and 512, batch 32,
`sliding_window(window=64)` against `full`. `--repo DIR` measures another checkout of effattn (an
older commit: the "before" column). `table` prints the fractions, the targets they are held to
and, with `--before`, the two runs side by side. `bounds` times the CPU flash kernel alone on
each layout's main chunk shape: the fraction of the peak the kernel allows it. Exact variants
count 4·D per attended pair; approximate ones the FLOPs their algorithm states (`flops_basis`
in the rows). A fraction is comparable across machines; a bare time is not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

EXACT = ["full", "sparse", "sparse:pattern=fixed", "bigbird", "sliding_window", "flex:mask=sliding_window"]
APPROX = ["linear", "performer", "linformer", "nystrom", "moba"]
FWD_LENS, FWDBWD_LENS, SHORT_LENS = "4k,8k,16k", "8k", "128,512"
SHORT = ["full", "sliding_window:window=64"]
QUICK = {"fwd": "256,512", "fwdbwd": "256", "short": "64,128", "batch": "4"}

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


def _sweeps(quick: bool):
    if quick:
        return {
            "fwd": ["--seq-lens", QUICK["fwd"], "--attn", ",".join(EXACT[:3] + APPROX[:2])],
            "fwdbwd": ["--seq-lens", QUICK["fwdbwd"], "--mode", "fwdbwd", "--attn", ",".join(EXACT[:2])],
            "short": [
                "--seq-lens",
                QUICK["short"],
                "--mode",
                "fwdbwd",
                "--batch",
                QUICK["batch"],
                "--attn",
                ",".join(SHORT),
            ],
        }
    return {
        "fwd": ["--seq-lens", FWD_LENS, "--attn", ",".join(EXACT + APPROX)],
        "fwdbwd": ["--seq-lens", FWDBWD_LENS, "--mode", "fwdbwd", "--attn", ",".join(EXACT[:5] + APPROX)],
        "short": ["--seq-lens", SHORT_LENS, "--mode", "fwdbwd", "--batch", "32", "--attn", ",".join(SHORT)],
    }


def run(out_dir: Path, repo: Path | None, quick: bool, only: list[str] | None) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    cwd = None
    if repo is not None:  # an older checkout: its code, imported from its tree
        env["PYTHONPATH"] = str(repo.resolve())
        cwd = str(repo.resolve())
    extra = ["--min-run-time", "0.05"] if quick else []
    for name, args in _sweeps(quick).items():
        if only and name not in only:
            continue
        out = (out_dir / FILES[name]).resolve()
        cmd = [sys.executable, "-m", "effattn.cli", "bench", *args, "--no-error", "--out", str(out), "--resume", *extra]
        print("$", " ".join(cmd[1:]), flush=True)
        rc = subprocess.call(cmd, env=env, cwd=cwd)
        if rc:
            print(f"efficiency: the {name} sweep exited with {rc}; its rows so far are in {out}", file=sys.stderr)
            return rc
    return 0


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "variant" in r and r.get("status") == "ok":
            out.append(r)
    return out


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


#: the main group of each layout at n = 8192, 8 heads, D = 64: (what, rows per chunk c, keys per
#: chunk K, masked, attended pairs per row of the chunk)
LAYOUTS = [
    ("sliding_window(256): 192-row chunks", 192, 704, True, 513),
    ("sparse strided band: 32-row chunks", 32, 286, True, 254),
    ("sparse strided residue classes", 64, 64, False, 64),
    ("sparse fixed own block", 128, 128, True, 120),
    ("sparse fixed summary columns", 1024, 512, False, 512),
    ("bigbird: 64-row block rows, 8 gathered blocks", 64, 512, False, 512),
    ("dense reference: 1024-row chunks, no mask", 1024, 1024, False, 1024),
]


def bounds(n: int = 8192, heads: int = 8, d: int = 64, repeats: int = 5) -> str:
    """The CPU flash kernel alone on each layout's main group shape: its rate on the pairs it
    computes, and on the useful ones (the layout's slack removed), as fractions of a matmul peak
    timed next to each: what the kernel allows each layout, whatever the code around it does."""
    import time

    import torch

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)

    def best(fn):
        fn()
        t = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            t = min(t, time.perf_counter() - t0)
        return t

    lines = ["| layout | c × K | kernel on computed pairs | on useful pairs |", "| --- | --- | --- | --- |"]
    for what, c, k, masked, useful in LAYOUTS:
        g = n // c
        q, kk, vv = torch.randn(g, heads, c, d), torch.randn(g, heads, k, d), torch.randn(g, heads, k, d)
        mask = torch.zeros(c, k) if masked else None
        if masked:
            mask[:, 0] = float("-inf")
        t = best(lambda: op(q, kk, vv, attn_mask=mask, scale=d**-0.5))
        peak = 2 * 1024**3 / best(lambda: torch.mm(a, b)) / 1e9
        rate = 4 * g * heads * c * k * d / t / 1e9
        lines.append(f"| {what} | {c} × {k} | {rate / peak:.0%} | {rate * useful / k / peak:.0%} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure (three effattn bench sweeps)")
    r.add_argument("--out-dir", type=Path, default=Path("results/efficiency-cpu"))
    r.add_argument("--repo", type=Path, help="another effattn checkout to measure (e.g. an older commit)")
    r.add_argument("--quick", action="store_true", help="tiny lengths: checks the script, measures nothing")
    r.add_argument("--only", help="comma list of sweeps: fwd,fwdbwd,short")
    t = sub.add_parser("table", help="print the table of a run directory")
    t.add_argument("run_dir", type=Path)
    t.add_argument("--before", type=Path)
    sub.add_parser("bounds", help="the CPU flash kernel alone on each layout's main group shape")
    a = ap.parse_args(argv)
    if a.cmd == "bounds":
        print(bounds())
        return
    if a.cmd == "run":
        only = a.only.split(",") if a.only else None
        if only and set(only) - set(FILES):
            raise SystemExit(f"efficiency: --only takes {','.join(FILES)}, not {a.only!r}")
        if a.repo is not None and not (a.repo / "effattn" / "__init__.py").exists():
            raise SystemExit(f"efficiency: --repo {a.repo} is not an effattn checkout")
        raise SystemExit(run(a.out_dir, a.repo, a.quick, only))
    print(table(a.run_dir, a.before))


if __name__ == "__main__":
    main()
