"""`effattn report` and `effattn compare`: the commands over `effattn.report`."""

from __future__ import annotations

import math
import os
import sys

import click

from .common import StrictCommand, fail, warn


@click.command(cls=StrictCommand)
@click.argument("results", nargs=-1, required=True)
@click.option("--out", "out_dir", default=None, help="folder for the report [default: <first results>-report]")
@click.option("--format", "fmt", default="md", show_default=True, help="comma list of md, html")
def report(results, out_dir, fmt):
    """Write a report (tables, plots, exponents, patterns) from one or more results files."""
    formats = [f.strip() for f in fmt.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("md", "html")]
    if bad or not formats:
        fail(f"--format {fmt!r}: choose from md, html")
    for p in results:
        if not os.path.isfile(p):
            fail(f"results file {p} does not exist")
    if out_dir is not None and not out_dir.strip():
        fail("--out is empty; leave it out to use the default folder")
    out_dir = out_dir or os.path.splitext(results[0])[0] + "-report"
    from ..report import build_report

    try:
        written = build_report(list(results), out_dir, formats, on_problem=warn)
    except OSError as e:
        fail(f"cannot write the report to {out_dir}: {e.strerror or e}")
    for w in written:
        click.echo(w)


@click.command(cls=StrictCommand)
@click.argument("base")
@click.argument("new")
@click.option(
    "--threshold",
    type=float,
    default=0.10,
    show_default=True,
    help="a slowdown must exceed this fraction to count as a regression",
)
@click.option(
    "--alpha",
    type=float,
    default=0.05,
    show_default=True,
    help="significance level of the one-sided Mann-Whitney U test on the points' round times",
)
def compare(base, new, threshold, alpha):
    """Per-point time ratio NEW/BASE; exit 1 on a regression.

    A regression is a point whose median slowed by more than --threshold AND whose round times are
    significantly slower by a one-sided Mann-Whitney U test at --alpha (as asv decides). A point
    with too few samples for the test to reach --alpha, or measured while its machine was busy, is
    "inconclusive", never a regression. Points are paired only when their whole identity (variant,
    length and configuration: device, dtype, batch, heads, head_dim, causal, mode, level, inputs,
    seed) is equal; the points that could not be paired are listed."""
    if not (threshold >= 0 and math.isfinite(threshold)):
        fail(f"--threshold {threshold}: must be a finite number >= 0")
    if not 0 < alpha < 1:
        fail(f"--alpha {alpha}: must be between 0 and 1")
    for p in (base, new):
        if not os.path.isfile(p):
            fail(f"results file {p} does not exist")
    from ..report.compare import compare_runs, config_text, configs_text
    from ..results import load, measured

    frames = [measured(load(p, on_problem=warn), [p], warn) for p in (base, new)]
    for p, df in zip((base, new), frames):
        if len(df) and "kind" in df and df["kind"].eq("task").all():
            fail(
                f"{p} holds training runs (--task), not timing points: compare compares times; "
                f"`effattn report {base} {new}` puts their accuracies side by side"
            )
    c = compare_runs(frames[0], frames[1], threshold, alpha)
    if c.machines:
        warn(f"{c.machines}: their times are not comparable, and no point is called a regression")
    if not c.points:
        fail(
            f"the two runs share no measured point of the same configuration ({base}: "
            f"{configs_text(c.only_base) or 'no ok point'}; {new}: {configs_text(c.only_new) or 'no ok point'})"
        )
    click.echo(f"{'variant':40s} {'n':>7s} {'base ms':>10s} {'new ms':>10s} {'ratio':>7s} {'p':>7s}  verdict")
    for r in c.points:
        p_text = "-" if r["p"] != r["p"] else f"{r['p']:.3f}"
        click.echo(
            f"{r['label']:40s} {r['seq_len']:7d} {r['base_ms']:10.2f} {r['new_ms']:10.2f} {r['ratio']:7.2f} "
            f"{p_text:>7s}  {r['verdict']}"
        )
    for what, rows in (("only in " + base, c.only_base), ("only in " + new, c.only_new)):
        if rows:
            click.echo(f"\n{len(rows)} point(s) {what} (not compared):")
            for r in rows[:20]:
                click.echo(f"  {r['label']} n={r['seq_len']} ({config_text(r)})")
            if len(rows) > 20:
                click.echo(f"  ... and {len(rows) - 20} more")
    click.echo(
        f"\n{len(c.points)} points compared: {c.regressions} regressions (slower by more than "
        f"{threshold:.0%} and p < {alpha:g}), {c.inconclusive} inconclusive"
    )
    sys.exit(1 if c.regressions else 0)
