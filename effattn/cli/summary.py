"""The tables that end a timing sweep: time and memory per length, a decode sweep's bandwidth, the
fitted exponents and crossovers, and the points that were loaded, faults or errors."""

from __future__ import annotations

import click
import pandas as pd

from ..bench.spec import base_row
from ..report.build import RECOMPUTE_MARK, RECOMPUTE_NOTE, mark_recompute
from ..results import load, summary
from ..store import config_key


def print_sweep_summary(path: str, spec, log) -> None:
    """The run's own configuration from its results file, in --attn's order."""
    df = load(path, on_problem=log)
    mine = config_key(base_row(spec, spec.variants[0], spec.seq_lens[0]))
    df = df[[config_key(r) == mine for r in df.to_dict("records")]]
    # rows arrive in completion order on Ray; tables follow --attn's order
    rank = {v.label: i for i, v in enumerate(spec.variants)}
    df = (
        df.assign(_rank=df["label"].map(rank).fillna(len(rank)))
        .sort_values(["_rank", "seq_len"], kind="stable")
        .drop(columns="_rank")
    )
    print_summary(df, summary(df))


def print_closing_advice(path: str, spec, log) -> None:
    """The advise table at the sweep's longest length, for its own configuration: the answer the
    sweep was run for, with the command that asks it at other lengths and constraints."""
    from ..report.advise import AdviseError, Constraints, advise
    from .advise import advice_text

    df = load(path, on_problem=log)
    mine = config_key(base_row(spec, spec.variants[0], spec.seq_lens[0]))
    df = df[[config_key(r) == mine for r in df.to_dict("records")]]
    n = max(spec.seq_lens)
    try:
        a = advise(df, Constraints(n, spec.mode))
    except AdviseError as e:
        log(f"(no advice at n = {n}: {e})")
        return
    click.echo(f"\nwhich one at n = {n}? (effattn advise {path} --seq-len N [--memory-budget SIZE] [--max-error E])")
    click.echo(advice_text(a))


def print_summary(df: pd.DataFrame, summ: pd.DataFrame) -> None:
    if df.empty:
        click.echo("no points")
        return
    df = mark_recompute(df)
    marked = set(df.loc[df["label"].str.endswith(RECOMPUTE_MARK), "label"].str[: -len(RECOMPUTE_MARK)])
    if marked:
        summ = summ.assign(label=[lb + RECOMPUTE_MARK if lb in marked else lb for lb in summ["label"]])
    decode = "mode" in df and (df["mode"] == "decode").all()
    _times(df)
    _memory(df, decode)
    _scaling(summ, decode)
    _flags(df, marked)


def _pivot(df: pd.DataFrame, col: str) -> pd.DataFrame:
    return df.pivot_table(index="label", columns="seq_len", values=col, aggfunc="last", sort=False)


def _times(df: pd.DataFrame) -> None:
    def cell(r):
        if r["status"] != "ok":
            return r["status"]
        return f"{r['time_ms']:.2f}" + ("*" if r.get("loaded") is True else "")

    cells = pd.DataFrame({"label": df["label"], "seq_len": df["seq_len"], "cell": df.apply(cell, axis=1)})
    click.echo("\ntime (ms, median of the rounds) per sequence length")
    click.echo(_pivot(cells, "cell").to_string())


def _memory(df: pd.DataFrame, decode: bool) -> None:
    ok = df[df["status"] == "ok"]
    col, title = ("cache_bytes", "cache at context n (MiB)") if decode else ("peak_mem_bytes", "peak memory (MiB)")
    click.echo(f"\n{title}")
    if ok.empty:
        click.echo("(no point ended ok)")
        return
    click.echo((_pivot(ok, col) / 2**20).round(3 if decode else 1).to_string())
    if decode and "bandwidth_fraction" in ok and ok["bandwidth_fraction"].notna().any():
        click.echo("\nbandwidth reached by a step (% of the memory bandwidth measured in the same group)")
        click.echo((_pivot(ok, "bandwidth_fraction") * 100).round(0).to_string())


def _scaling(summ: pd.DataFrame, decode: bool) -> None:
    s = summ.copy()

    def interval(e, lo, hi):
        if pd.isna(e):
            return "-"
        return f"{e:.2f}" + ("" if pd.isna(lo) else f" [{lo:.2f}, {hi:.2f}]")

    s["time exponent [95%]"] = [
        interval(e, lo, hi) for e, lo, hi in zip(s["time_exponent"], s["time_exponent_lo"], s["time_exponent_hi"])
    ]
    memory = "cache exponent" if decode else "memory exponent"
    s[memory] = ["-" if pd.isna(e) else f"{e:.2f}" for e in s["mem_exponent"]]
    cross = [c for c in s.columns if c.startswith("faster_than_")][0]
    s[cross.replace("_", " ")] = s["crossover"].replace("", "-")
    click.echo("\nscaling (log-log fit)")
    columns = ["label", "time exponent [95%]", memory, "fit_from", cross.replace("_", " "), "points"]
    click.echo(s[columns].to_string(index=False))
    if s["crossover"].str.startswith(("between", "<=")).any():
        click.echo(
            "(a range: the points' 95% intervals overlap there, so the data cannot place the crossover more precisely)"
        )


def _flags(df: pd.DataFrame, marked: set) -> None:
    """What is not to be trusted, and why: loaded points, recomputing decoders, faults, errors."""
    loaded = df[df["loaded"].fillna(False).astype(bool)] if "loaded" in df else df.iloc[:0]
    if len(loaded):
        why = []
        for reasons in loaded.get("load_reasons", pd.Series(dtype=object)):
            for w in reasons if isinstance(reasons, list) else ["fewer than 6 quiet rounds within the wait"]:
                if w not in why:
                    why.append(w)
        click.echo(
            f"\n* WARNING: {len(loaded)} of {len(df)} points were measured while the machine was busy "
            f"({'; '.join(why[:3]) or 'fewer than 6 quiet rounds within the wait'}); their times, exponents and "
            "crossovers are not to be trusted (--require-quiet waits for a quiet machine): "
            + ", ".join(f"{r['label']} n={r['seq_len']}" for _, r in loaded.iterrows())
        )
    if marked:
        click.echo(f"\n{RECOMPUTE_MARK.strip()}: {RECOMPUTE_NOTE}")
    faults = df[df["fault"].notna()] if "fault" in df else df.iloc[:0]
    if len(faults):
        click.echo("\nmeasurement faults (not to be trusted):")
        for _, r in faults.iterrows():
            click.echo(f"  {r['label']} n={r['seq_len']}: {r['fault']}")
    errors = df[df["status"] == "error"]
    if len(errors):
        click.echo("\npoints that are errors (not measured correctly):")
        for _, r in errors.iterrows():
            why = " ".join(str(r["reason"]).split())
            click.echo(f"  {r['label']} n={r['seq_len']}: {why[:300]}" + ("..." if len(why) > 300 else ""))
