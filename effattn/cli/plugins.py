"""`effattn list`, `effattn info`, `effattn check` and `effattn new-plugin`: what plugins there are,
the machine, the conformance suite run on one plugin, and a new plugin package to fill in."""

from __future__ import annotations

import fnmatch
import shlex
import sys

import click

from .common import StrictCommand, fail, wrap


@click.command("list", cls=StrictCommand)
@click.option("--device", default="cpu", show_default=True, help="availability is judged for this device")
@click.argument("pattern", default="*")
def list_cmd(device, pattern):
    """List registered plugins, attention and sequence mixers (PATTERN: shell wildcard)."""
    from ..registry import broken_plugins, get_entry, list_attention

    rows, unavailable = [], {}
    for name in list_attention(pattern):
        e = get_entry(name)
        f = e.facts
        masks = [
            m
            for m, ok in (
                ("causal-only" if f.causal_only else "causal", f.supports_causal),
                ("padding", f.supports_padding),
                ("cross", f.supports_cross),
                ("gqa", f.supports_gqa),
                ("decode", f.supports_decode),
            )
            if ok
        ]
        why = e.availability(device)
        kind = "mixer" if f.kind == "mixer" else "exact" if f.exact else "approx"
        rows.append((name, kind, f.complexity, ",".join(masks) or "-", "yes" if why is None else "no *"))
        unavailable[name] = why
    head = ("name", "kind", "complexity", "supports", f"on {device}")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if rows:
        click.echo(
            "\nkind: exact and approx(imate) are attention plugins, called with q, k, v; a mixer is a sequence"
            "\nmixer, called with the layer's input (it runs at --level layer and model, not attention)"
        )
    if any(unavailable.values()):
        click.echo(f"\n* not available on {device}:")
        for name, why in unavailable.items():
            if why:
                _wrapped(f"  {name}: {why}", "    ")
    if rows:
        click.echo("\nwhat each computes, and its options (NAME:KEY=VALUE; `effattn info NAME` for more):")
        w = max(len(r[0]) for r in rows)
        pad = " " * (w + 4)
        for r in rows:
            e = get_entry(r[0])
            _wrapped(f"  {r[0]:{w}s}  {e.facts.description or '(no description)'}", pad)
            _wrapped(f"{pad}options: {_options_line(e.target)}", pad + "  ")
            _wrapped(f"{pad}devices: {','.join(e.facts.devices)}; from {e.source}", pad + "  ")
    broken = {k: v for k, v in broken_plugins().items() if fnmatch.fnmatchcase(k, pattern)}
    if broken:
        click.echo("\nbroken plugins:")
        for k, why in sorted(broken.items()):
            click.echo(f"  {k}: {why}")
    from ..registry import ENTRY_POINT_GROUP, lookalike_groups

    for group in lookalike_groups():
        from importlib import metadata

        names = ", ".join(sorted(ep.name for ep in metadata.entry_points(group=group)))
        click.echo(
            f"effattn: warning: entry-point group {group!r} ({names}) is not {ENTRY_POINT_GROUP!r}: its plugins are "
            "not loaded; fix the group in the package's pyproject.toml and reinstall it",
            err=True,
        )


def _wrapped(text: str, indent: str) -> None:
    """Echo `text` within 100 columns (a terminal of 100 shows `list` whole)."""
    for line in wrap(text, indent=indent, break_long_words=False):
        click.echo(line)


def _options_line(target) -> str:
    from ..registry import option_info

    def shown(value) -> str:  # one short line, whatever the default is
        text = " ".join(repr(value).split())
        return text if len(text) <= 40 else text[:37] + "..."

    opts = option_info(target)
    return (
        ", ".join(f"{o['name']}={shown(o['default'])}" if "default" in o else f"{o['name']} (required)" for o in opts)
        or "none"
    )


@click.command(cls=StrictCommand)
@click.argument("name", required=False)
@click.option("--device", default="cpu", show_default=True, help="NAME's availability is judged for this device")
def info(name, device):
    """Versions, device, threads, CPU and GPU; with NAME, one plugin: what it computes, its
    declared facts, its options with their types and defaults, and where it comes from."""
    if name is None:
        from ..env import environment

        for k, v in environment().items():
            if k != "argv":
                click.echo(f"{k:14s} {v}")
        return
    import dataclasses
    import inspect

    from ..registry import get_entry, option_info, provenance

    e = get_entry(name)
    click.echo(f"{name}  ({e.source})")
    doc = inspect.getdoc(e.target) or "(no docstring)"
    click.echo("\n" + doc + "\n")
    family = inspect.getdoc(inspect.getmodule(e.target))  # what the family computes (one family per file)
    if family and family != doc:
        click.echo(family + "\n")
    click.echo("facts:")
    for f in dataclasses.fields(e.facts):
        if f.name != "description":
            v = getattr(e.facts, f.name)
            shown = ", ".join(x if isinstance(x, str) else _option_text(x) for x in v) if isinstance(v, tuple) else v
            click.echo(f"  {f.name:17s} {shown}")
    why = e.availability(device)
    click.echo(f"  {'available':17s} {'yes' if why is None else why} (on {device})")
    opts = option_info(e.target)
    click.echo("options:" if opts else "options: none")
    for o in opts:
        default = f"default {o['default']!r}" if "default" in o else "required"
        click.echo(f"  {o['name']:17s} {o.get('type', '?'):8s} {default}")
    prov = provenance(name)
    click.echo(f"from: {prov['plugin_dist'] or 'unknown distribution'} {prov['plugin_version'] or ''}".rstrip())
    if prov["plugin_wraps"]:
        click.echo("wraps: " + ", ".join(f"{k} {v or '(not installed)'}" for k, v in prov["plugin_wraps"].items()))


@click.command(cls=StrictCommand)
@click.argument("variant")
@click.option("--device", default="cpu", show_default=True)
@click.option("--seq-lens", default="1,23,77", show_default=True, help="lengths the checks use")
def check(variant, device, seq_lens):
    """Run the conformance suite on one plugin: NAME[:KEY=VALUE...]."""
    import torch

    from ..registry import get_entry
    from ..spec import parse_seq_lens, parse_variant
    from ..testing import run_checks, summarize

    v = parse_variant(variant)
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: CUDA is not available on this machine")
    why = get_entry(v.name).availability(device)
    if why:
        fail(f"{v.label}: {why}")

    def show(r):  # each check as it ends: a slow or hanging plugin shows where it is
        mark = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}[r.status]
        lines = r.detail.splitlines() or [""]
        if r.status == "failed":  # every failing case on its own line
            click.echo(f"{mark:5s} {r.name}")
            for line in lines:
                click.echo(f"        {line}")
        else:
            click.echo(f"{mark:5s} {r.name}" + (f"  ({lines[0]})" if lines[0] else ""))

    from ..testing import MAX_CHECK_LEN

    lens = tuple(parse_seq_lens(seq_lens))
    if max(lens) > MAX_CHECK_LEN:
        fail(f"--seq-lens {seq_lens}: at most {MAX_CHECK_LEN} (the checks build a dense float64 reference, n x n)")
    results = run_checks(v.name, device=device, seq_lens=lens, on_result=show, **v.options)
    click.echo(f"{v.label}: {summarize(results)}")
    sys.exit(1 if any(r.status == "failed" for r in results) else 0)


@click.command("new-plugin", cls=StrictCommand)
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, help="where the package folder is made")
@click.option("--mixer", is_flag=True, help="a sequence mixer (takes the layer's input: docs/mixers.md)")
def new_plugin(name, directory, mixer):
    """Write a plugin package to fill in: NAME is the plugin's registered name.

    It holds a pyproject.toml with the entry point, a plugin module with the contract's skeleton
    and a test that runs the conformance suite (failing until forward is written; with --mixer,
    a sequence mixer's skeleton, failing until mix and step_state are written)."""
    from ..registry import get_entry, list_attention
    from ..scaffold import names_for, new_plugin

    n = names_for(name)
    clash = [x for x in list_attention() if x.lower() == name.lower()]  # (a case apart is too close)
    if clash:
        fail(f"a plugin named {clash[0]!r} is already registered ({get_entry(clash[0]).source}); choose another name")
    root = new_plugin(name, directory, mixer=mixer)
    cls = n["cls"].removesuffix("Attention") + "Mixer" if mixer else n["cls"]
    click.echo(f"wrote {root}/ ({n['dist']}: {n['module']}.{cls})")
    click.echo(f"next: cd {shlex.quote(root)} && pip install -e '.[test]' && effattn list {name} && pytest")


def _option_text(options) -> str:
    """A dict of options as --attn writes them (window=4:global_tokens=2), anything else as it is."""
    if isinstance(options, dict):
        return ":".join(f"{k}={v}" for k, v in options.items()) or "(defaults)"
    return str(options)
