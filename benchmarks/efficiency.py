"""How close each implementation runs to this machine's limit: useful GFLOP/s as a fraction of the
fp32 matmul peak measured in the same rounds, per variant and mode, and the short-length training
comparison (batch 32, forward + backward, against `full`).

    python benchmarks/efficiency.py run --out-dir results/efficiency/after
    python benchmarks/efficiency.py table results/efficiency/after [--before results/efficiency/before]
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
import os
import subprocess
import sys
from pathlib import Path

from efficiency_table import APPROX, EXACT, FILES, table

FWD_LENS, FWDBWD_LENS, SHORT_LENS = "4k,8k,16k", "8k", "128,512"
SHORT = ["full", "sliding_window:window=64"]
QUICK = {"fwd": "256,512", "fwdbwd": "256", "short": "64,128", "batch": "4"}


def _sweeps(quick: bool) -> dict[str, list[str]]:
    """The three sweeps' `effattn bench` options."""
    fwd, fwdbwd, short = (
        (QUICK[k] for k in ("fwd", "fwdbwd", "short")) if quick else (FWD_LENS, FWDBWD_LENS, SHORT_LENS)
    )
    attn = (EXACT[:3] + APPROX[:2], EXACT[:2]) if quick else (EXACT + APPROX, EXACT[:5] + APPROX)
    return {
        "fwd": ["--seq-lens", fwd, "--attn", ",".join(attn[0])],
        "fwdbwd": ["--seq-lens", fwdbwd, "--mode", "fwdbwd", "--attn", ",".join(attn[1])],
        "short": [
            "--seq-lens",
            short,
            "--mode",
            "fwdbwd",
            "--batch",
            QUICK["batch"] if quick else "32",
            "--attn",
            ",".join(SHORT),
        ],  # fmt: skip
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


def bounds(n: int = 8192, heads: int = 8, d: int = 64) -> str:
    """The CPU flash kernel alone on each layout's main group shape: its rate on the pairs it
    computes, and on the useful ones (the layout's slack removed), as fractions of the matmul peak
    of the same rounds (effattn's timing engine): what the kernel allows each layout, whatever the
    code around it does."""
    import torch

    from effattn.bench.timing import time_interleaved

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    calls, pairs = {}, {}
    for what, c, k, masked, useful in LAYOUTS:
        g = n // c
        q, kk, vv = torch.randn(g, heads, c, d), torch.randn(g, heads, k, d), torch.randn(g, heads, k, d)
        mask = torch.zeros(c, k) if masked else None
        if masked:
            mask[:, 0] = float("-inf")
        calls[what] = lambda q=q, kk=kk, vv=vv, mask=mask: op(q, kk, vv, attn_mask=mask, scale=d**-0.5)
        calls[what]()  # warm
        pairs[what] = (4 * g * heads * c * k * d, useful / k, c, k)
    got = time_interleaved(calls, min_run_time_s=1.0)
    peak = got.group.matmul_peak_gflops
    lines = ["| layout | c × K | kernel on computed pairs | on useful pairs |", "| --- | --- | --- | --- |"]
    for what, (flops, share, c, k) in pairs.items():
        rate = flops / (got.timings[what].time_ms / 1e3) / 1e9
        lines.append(f"| {what} | {c} × {k} | {rate / peak:.0%} | {rate * share / peak:.0%} |")
    return "\n".join(lines) + f"\n\nMatmul peak of the same rounds: {peak:.0f} GFLOP/s."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure (three effattn bench sweeps)")
    r.add_argument("--out-dir", type=Path, default=Path("results/efficiency/after"))
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
