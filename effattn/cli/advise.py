"""`effattn advise`: which variant at my length, my memory and my error tolerance, from measured
results files (the logic is effattn.report.advise; this module parses and prints)."""

from __future__ import annotations

import json
import math
import os

import click

from .common import WIDTH, StrictCommand, fail, warn, wrap


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "yes", "1", "causal"):
        return True
    if t in ("false", "no", "0"):
        return False
    fail(f"--causal {text!r}: give true or false")


@click.command(cls=StrictCommand)
@click.argument("results", nargs=-1, required=True)
@click.option("--seq-len", "seq_len", required=True, help="the length to decide for (k suffix allowed: 8k)")
@click.option("--mode", type=click.Choice(["fwd", "fwdbwd", "decode"]), default="fwd", show_default=True)
@click.option("--memory-budget", default=None, help="inputs plus peak must fit in this (e.g. 512MB, 2GiB)")
@click.option("--max-error", default=None, help="largest relative error against full (full itself: 0)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--device", default=None, help="keep the points of this device (cpu, cuda)")
@click.option("--dtype", default=None, help="keep the points of this dtype")
@click.option("--batch", type=int, default=None)
@click.option("--heads", type=int, default=None)
@click.option("--head-dim", "head_dim", type=int, default=None)
@click.option("--causal", default=None, help="true or false: keep the causal or the non-causal points")
@click.option("--level", type=click.Choice(["attention", "layer", "model"]), default=None)
@click.option("--inputs", type=click.Choice(["random", "trained"]), default=None)
@click.option("--seed", type=int, default=None)
@click.option("--kv-heads", "kv_heads", default=None, help="a number, or none (as many as --heads)")
@click.option("--layers", type=int, default=None, help="the backbone's layers (--level model)")
def advise(results, seq_len, mode, memory_budget, max_error, fmt, **filters):
    """The variants that meet every constraint at --seq-len, fastest first, and every other variant
    with the reason it is out.

    Figures come from the points measured at that length; where a variant was not measured there,
    from its measured lengths - interpolated between two, or extrapolated past the longest from the
    local scaling - marked as estimates, with an interval that reflects the fit's uncertainty."""
    from ..errors import EffattnError
    from ..report.advise import AdviseError, Constraints, advise
    from ..results import latest, load, measured
    from ..spec import parse_seq_lens, parse_size

    n = _length(seq_len, parse_seq_lens, EffattnError)
    budget = None
    if memory_budget is not None:
        try:
            budget = parse_size(memory_budget)
        except EffattnError as e:
            fail(f"--memory-budget: {e}")
    err = _error(max_error)
    if filters.get("causal") is not None:
        filters["causal"] = _bool(filters["causal"])
    kv = filters.pop("kv_heads")
    if kv is not None:
        if kv.strip().lower() == "none":
            filters["kv_heads"] = None
        elif kv.strip().isdigit() and int(kv) > 0:
            filters["kv_heads"] = int(kv)
        else:
            fail(f"--kv-heads {kv!r}: give a positive number or none")
    for p in results:
        if os.path.isdir(p):
            fail(f"{p} is a folder, not a results file")
        if not os.path.isfile(p):
            fail(f"results file {p} does not exist")
    chosen = {k: v for k, v in filters.items() if v is not None or k == "kv_heads"}
    try:
        df = measured(load(*results, on_problem=warn), list(results), warn)
        if "measured_at" in df and len(results) > 1:  # the newest row of a point, whichever file holds it
            df = df.assign(_at=df["measured_at"].astype(str)).sort_values("_at", kind="stable").drop(columns="_at")
        df = latest(df)
        if "kind" in df:
            df = df[~df["kind"].eq("task")]
        a = advise(df, Constraints(n, mode, budget, err, chosen))
    except AdviseError as e:
        fail(str(e))
    if fmt == "json":
        click.echo(json.dumps(a.as_dict(), indent=2, default=str))
    else:
        click.echo(advice_text(a, sources=results))


def _length(text, parse, error_cls) -> int:
    try:
        lens = parse(text)
    except error_cls as e:
        fail(f"--seq-len: {e}")
    if len(lens) != 1:
        fail(f"--seq-len {text!r}: give one length (advise answers for one at a time)")
    return lens[0]


def _error(text):
    if text is None:
        return None
    try:
        e = float(text)
    except ValueError:
        fail(f"--max-error {text!r}: not a number (a relative error such as 0.05)")
    if not (math.isfinite(e) and e >= 0):
        fail(f"--max-error {text!r}: must be a finite number >= 0")
    return e


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _num(x: float) -> str:
    """A time in ms at three significant figures without an exponent."""
    if not math.isfinite(x):
        return "?"
    if x < 0.001:
        return f"{x:.2g}"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _time(e) -> str:
    lo, hi = e.time_ms_interval
    if not math.isfinite(hi):
        return f"{_num(e.time_ms)} [?]"
    return f"{_num(e.time_ms)} [{_num(lo)}, {_num(hi)}]"


def _len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _basis(e) -> str:
    """The estimate's basis, short: measured / interpolated 2k-4k / extrapolated from 4k-16k."""
    b = e.basis
    for word, short in (("interpolated between n = ", "interpolated "), ("extrapolated from n = ", "extrapolated ")):
        if b.startswith(word):
            a, _, z = b[len(word) :].replace(" and ", "..").partition("..")
            b = f"{short}{_len(int(a))}-{_len(int(z))}"
    return b + (", busy" if e.loaded else "")


def advice_text(a, sources=(), width: int = WIDTH) -> str:
    """The advice as lines of at most `width` columns: the ranked candidates, the recommendation,
    the excluded variants with their reasons."""
    c = a.constraints
    cfg = a.config
    shape = (
        f"{cfg.get('device')} {cfg.get('dtype')}, batch {cfg.get('batch')}, {cfg.get('heads')} heads of "
        f"{cfg.get('head_dim')}, {'causal' if cfg.get('causal') else 'non-causal'}, {cfg.get('level')} level"
    )
    lines = wrap(f"effattn advise: n = {c.seq_len}, {c.mode}; {shape}", width)
    want = []
    if c.memory_budget_bytes:
        from ..report.advise import _size

        want.append(f"inputs + peak <= {_size(c.memory_budget_bytes)}")
    if c.max_error is not None:
        want.append(f"error against full <= {c.max_error:g}")
    lines += wrap("constraints: " + ("; ".join(want) if want else "none (ranked by time)"), width)
    if sources:
        lines += wrap("from: " + ", ".join(sources), width)
    lines.append("")
    if a.candidates:
        lw = min(28, max(len("variant"), *(len(e.label) for e in a.candidates)))
        tw = max(len("time ms [95%]"), *(len(_time(e)) for e in a.candidates))
        lines.append(f"{'#':>2}  {'variant':{lw}}  {'time ms [95%]':>{tw}}  {'MiB':>9}  {'error':>7}  basis")
        for i, e in enumerate(a.candidates, 1):
            label = e.label if len(e.label) <= lw else e.label[: lw - 1] + "…"
            mark = "~" if e.extrapolated else " "
            err = "-" if e.rel_err is None else f"{e.rel_err:.2g}"
            row = f"{i:>2}  {label:{lw}} {mark}{_time(e):>{tw}} {mark}{_mib(e.memory_bytes):>9}  {err:>7}  {_basis(e)}"
            lines.append(row if len(row) <= width else row[: width - 1] + "…")
        lines.append("")
        rec = a.candidates[0]
        text = f"recommended: {rec.label}, the fastest of the {len(a.candidates)} that meet every constraint"
        lines += wrap(text, width)
        if a.tied:
            lines += wrap(
                f"  but {', '.join(a.tied)} overlap its interval: the data cannot tell which is faster", width
            )
        if any(not math.isfinite(e.time_ms_interval[1]) for e in a.candidates):
            lines += wrap("  [?]: too few rounds for a 95% interval; such a time orders nothing", width)
        if any(e.extrapolated for e in a.candidates):
            lines += wrap(
                "  ~ marks an estimate: this length was not measured for that variant; the figure comes from "
                "its measured lengths (the interval includes how much the fit's exponent still moves)",
                width,
            )
    else:
        lines.append("recommended: none - no variant meets every constraint")
    if a.excluded:
        lines.append("")
        lines.append("excluded:")
        lw = max(len(d["label"]) for d in a.excluded)
        lw = min(lw, 24)
        for d in a.excluded:
            label = d["label"] if len(d["label"]) <= lw else d["label"][: lw - 1] + "…"
            lines += wrap(f"  {label:{lw}}  {d['reason']}", width, indent=" " * (lw + 4))
    return "\n".join(lines)
