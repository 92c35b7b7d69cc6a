"""The markdown tables of benchmarks/references.py's rows (`references.py table FILE`).

The rows are results rows of kind "reference" (effattn.store.SCRIPT_KINDS): effattn's reader
reads them, garbage lines are reported and skipped, and foreign files are refused in one line.
"""

from __future__ import annotations

from pathlib import Path

from reference_impls import CASE_NAMES, CASES, MEASURES

from effattn.store import ResultsFileError, read_results

RATIOS = ("ours_over_reference", "ours_over_full", "reference_over_full")


class Fail(Exception):
    """A bad input: one line to stderr, exit status 2."""


def load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise Fail(f"{path} is not a file of references rows (write one with: references.py run --out {path})")
    try:
        rows, _ = read_results(str(path), missing_ok=False)
    except ResultsFileError:
        rows = []
    rows = [r for r in rows if r.get("kind") == "reference" and r.get("measure") in MEASURES]
    if not rows:
        raise Fail(f"{path} holds no references rows")
    return rows


def _t(x) -> str:
    if isinstance(x, (int, float)):
        return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"
    return "-" if x is None else str(x)


def _r(x) -> str:
    return "-" if x is None else f"{x:.3g}×"


def _mib(x) -> str:
    return f"{x / 2**20:.3g}" if isinstance(x, int) else ("-" if x is None else str(x))


def _e(x) -> str:
    if isinstance(x, dict):
        return f"{x['max_abs']:.2g} / {x['rel_fro']:.2g}"
    return "-" if x is None else str(x)


def table(rows: list[dict]) -> str:
    latest = {(r["case"], r["n"], r["measure"]): r for r in rows}
    order = {c: i for i, c in enumerate(CASE_NAMES)}
    keys = sorted({(r["case"], r["n"]) for r in rows}, key=lambda x: (order.get(x[0], 99), x[1]))
    env = rows[-1].get("env", {})
    peaks = sorted(round(r["matmul_peak_gflops"]) for r in rows if r.get("matmul_peak_gflops"))
    peak = f" Matmul peak of the same runs {peaks[0]}–{peaks[-1]} GFLOP/s." if peaks else ""
    out = [
        f"torch {env.get('torch')}, {env.get('threads')} threads, {env.get('cpu')}; batch {rows[0]['batch']}, "
        f"{rows[0]['heads']} heads, head_dim {rows[0]['head_dim']}, float32, causal. Times: median per call.{peak}",
        "",
        "| case | n | reference | fwd ours/ref | fwd ours/full | fwd ref/full | fwd+bwd ours/ref | fwd+bwd ours/full "
        "| fwd+bwd ref/full | fwd ours | fwd ref |",
        "|" + " --- |" * 11,
    ]
    for c, n in keys:
        f, fb = latest.get((c, n, "fwd"), {}), latest.get((c, n, "fwdbwd"), {})
        out.append(
            f"| `{c}` | {n} | {(f or fb).get('reference_impl', '?')} "
            + "".join(f"| {_r(x.get(k))} " for x in (f, fb) for k in RATIOS)
            + f"| {_t(f.get('ours'))} | {_t(f.get('reference'))} |"
        )
    out += [
        "",
        "Peak memory of one forward (MiB above what was allocated before it) and errors "
        "(max abs / relative Frobenius):",
        "",
        "| case | n | mem ours | mem ref | mem full | ours vs ref, f32 | ours vs ref, f64 | ours vs full, f32 |",
        "|" + " --- |" * 8,
    ]
    for c, n in keys:
        m = latest.get((c, n, "memory"), {})
        e32, e64 = latest.get((c, n, "error_float32"), {}), latest.get((c, n, "error_float64"), {})
        out.append(
            f"| `{c}` | {n} | {_mib(m.get('ours'))} | {_mib(m.get('reference'))} | {_mib(m.get('full'))} "
            f"| {_e(e32.get('ours_vs_reference'))} | {_e(e64.get('ours_vs_reference')) if e64 else 'n/a (f32 ref)'} "
            f"| {_e(e32.get('ours_vs_full'))} |"
        )
    out += ["", "References: " + "; ".join(f"`{x[0]}`: {x[4]}{'' if x[5] else ' (effattn-side)'}" for x in CASES) + "."]
    return "\n".join(out)
