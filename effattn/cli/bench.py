"""`effattn bench`: the sweep command.

Three modes share the command: a timing sweep (the default), `--find-max-len` and `--task`. Each
mode's options are listed once, in MODE_OPTIONS; an option given to a mode that does not use it
is an error, never silently ignored. Everything is validated before any file is touched; then the
results file is opened (created atomically, locked for the run) by `effattn.store.ResultsFile`,
its one writer.
"""

from __future__ import annotations

import math
import os
import signal
import sys

import click

from .common import StrictCommand, fail, log

DEFAULT_SEQ_LENS = "256,512,1k,2k,4k"

# Which options each mode reads (click parameter names). Everything else given is refused.
_COMMON = {"seq_lens", "attn", "out_path", "resume", "overwrite", "preset"}
_SHAPES = {
    "device",
    "dtype",
    "batch",
    "heads",
    "kv_heads",
    "head_dim",
    "causal",
    "mode",
    "level",
    "seed",
    "inputs",
    "timeout_s",
    "memory_budget",
    "min_run_time",
}
_RAY = {"executor", "ray_address", "cpus_per_point"}
MODE_OPTIONS = {
    "timing": _COMMON | _SHAPES | _RAY | {"isolate", "no_error", "layers", "require_quiet", "quiet_wait"},
    "find-max-len": _COMMON | _SHAPES | {"find_max_len", "executor", "layers"},
    "task": _COMMON
    | _RAY
    | {"task_spec", "steps", "lr", "train_batch", "seeds", "d_model", "layers", "conv_kernel", "heads", "device"},
}
_WHY_NOT = {
    ("find-max-len", "isolate"): "every probe already runs in its own process",
    ("find-max-len", "no_error"): "probes never compute the error columns",
    ("task", "dtype"): "task models train in float32",
    ("task", "seed"): "use --seeds (training runs are seeded 0, 1, ...)",
}


class FiniteFloat(click.ParamType):
    """A finite number > 0, at most `most` (click's FloatRange lets inf and nan through)."""

    name = "seconds"

    def __init__(self, most: float = float("inf"), name: str = "seconds"):
        self.most, self.name = most, name

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x) or x <= 0:
            self.fail(f"{value!r} must be a finite number > 0", param, ctx)
        if x > self.most:
            self.fail(f"{value!r} is more than {self.most:g}", param, ctx)
        return x


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: every finished row is kept (exit 143)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _default_variants(device: str, causal: bool) -> str:
    from ..registry import get_entry, list_attention

    # effattn's own built-ins; the wrappers of other libraries (`wraps`: local-attention, HF, FlexAttention)
    # are compared on purpose, through --attn or the `peers` preset; and only those that compute the
    # sweep's masking (a causal-only recurrence has no row in a bidirectional sweep, nor an encoder-only
    # variant in a causal one: asked for by name, they are recorded as unsupported)
    def fits(e) -> bool:
        return e.facts.supports_causal if causal else not e.facts.causal_only

    return ",".join(
        n
        for n in list_attention()
        if get_entry(n).source == "builtin"
        and not getattr(get_entry(n).target, "wraps", None)
        and get_entry(n).availability(device) is None
        and fits(get_entry(n))
    )


def _check_dtype(device: str, dtype: str):
    import torch

    try:
        a = torch.ones(8, 8, device=device, dtype=getattr(torch, dtype))
        torch.nn.functional.scaled_dot_product_attention(a[None, None], a[None, None], a[None, None])
    except Exception as e:  # noqa: BLE001 - whatever the probe raises, the dtype cannot run here
        fail(f"--dtype {dtype} is not supported on {device}: {str(e).splitlines()[0]}")


@click.command(cls=StrictCommand)
@click.option("--seq-lens", default=None, help=f"comma list; k = 1024 [default: {DEFAULT_SEQ_LENS}; 64 with --task]")
@click.option(
    "--attn",
    "attn",
    default=None,
    help="NAME[:KEY=VALUE...] comma list [default: every available built-in that computes the sweep's masking]",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--dtype", type=click.Choice(["float32", "bfloat16", "float16", "float64"]), default="float32", show_default=True
)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=None, help="[default: 8; 4 with --task]")
@click.option(
    "--kv-heads",
    type=click.IntRange(min=1),
    default=None,
    help="key/value heads, a divisor of --heads: grouped-query attention (1 = multi-query) [default: --heads]",
)
@click.option("--head-dim", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--causal", is_flag=True, help="causal masking (implied by --mode decode)")
@click.option(
    "--mode",
    type=click.Choice(["fwd", "fwdbwd", "decode"]),
    default="fwd",
    show_default=True,
    help="decode: prefill n tokens, then time one generated token at context n",
)
@click.option("--level", type=click.Choice(["attention", "layer", "model"]), default="attention", show_default=True)
@click.option("--out", "out_path", default=None, help="JSON-lines results file [default: results/bench-<time>.jsonl]")
@click.option("--resume", is_flag=True, help="complete only the points missing from --out")
@click.option("--overwrite", is_flag=True, help="replace an existing --out instead of refusing")
@click.option("--isolate", is_flag=True, help="a fresh process per point [default: one reused measuring process]")
@click.option(
    "--timeout",
    "timeout_s",
    type=FiniteFloat(7 * 24 * 3600),
    default=120.0,
    show_default=True,
    help="seconds one call of the attention may take",
)
@click.option("--memory-budget", default=None, help="e.g. 4GB: a point above it is recorded as oom")
@click.option(
    "--min-run-time", type=FiniteFloat(3600), default=0.2, show_default=True, help="seconds of timed repeats per point"
)
@click.option("--no-error", is_flag=True, help="skip the error-vs-full columns (exact variants are still checked)")
@click.option(
    "--require-quiet",
    is_flag=True,
    help="measure only on a quiet machine: wait for quiet before each length, measure a length again when it "
    "was loaded, and stop (exit 3) when the machine stays busy",
)
@click.option(
    "--quiet-wait",
    type=FiniteFloat(7 * 24 * 3600),
    default=120.0,
    show_default=True,
    help="--require-quiet: seconds to wait for a quiet machine before each length",
)
@click.option("--seed", type=click.IntRange(min=0, max=2**62), default=0, show_default=True)
@click.option(
    "--inputs",
    type=click.Choice(["random", "trained"]),
    default="random",
    show_default=True,
    help="q, k, v: Gaussian, or from a backbone trained on MQAR (peaked attention)",
)
@click.option(
    "--find-max-len",
    is_flag=True,
    help="find each variant's longest length within --memory-budget (default: free memory)",
)
@click.option(
    "--task",
    "task_spec",
    default=None,
    help="train on a task instead of timing: NAME[:KEY=VALUE...] (mqar, listops, retrieval_distance)",
)
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="--task: training steps")
@click.option(
    "--lr",
    type=FiniteFloat(10.0, name="rate"),
    default=3e-3,
    show_default=True,
    help="--task: peak learning rate (AdamW, 50 warm-up steps, linear decay)",
)
@click.option("--train-batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="--task: repeats")
@click.option("--d-model", type=click.IntRange(min=1), default=64, show_default=True, help="--task: model width")
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="layers of the --task model or --level model",
)
@click.option(
    "--conv-kernel",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="--task: short causal conv before attention (0 = off)",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="where points run: here, one at a time, or as tasks on a Ray cluster",
)
@click.option(
    "--ray-address",
    default=None,
    help="--executor ray: the cluster (HOST:PORT, ray://HOST:PORT or auto) "
    "[default: $RAY_ADDRESS, else a new local instance]",
)
@click.option(
    "--cpus-per-point",
    type=click.IntRange(min=1),
    default=None,
    help="--executor ray: CPUs (and torch threads) each point gets [default: 1]",
)
@click.option("--preset", default=None, help="a named sweep (effattn presets); options given beside it override it")
@click.pass_context
def bench(ctx, **o):
    """Sweep sequence lengths and measure time, memory and error of attention variants."""
    if o["preset"] is not None:
        _apply_preset(ctx, o)
    mode = "task" if o["task_spec"] is not None else "find-max-len" if o["find_max_len"] else "timing"
    _check_options(ctx, mode, o)
    if mode == "task":
        return _task_mode(o)
    spec, ex = _timing_spec(o)
    if mode == "find-max-len":
        return _find_max_len(spec, o)
    return _timing_mode(spec, ex, o)


def _flag(ctx, name: str) -> str:
    for p in ctx.command.params:
        if p.name == name:
            return p.opts[0]
    return name


def _apply_preset(ctx, o: dict) -> None:
    """Fill the options the user did not give from the preset; remember both for the rows."""
    from click.core import ParameterSource

    from ..presets import get_preset

    if not o["preset"].strip():
        fail("--preset is empty; leave it out, or name one of `effattn presets`")
    p = get_preset(o["preset"].strip())
    given = {
        n: o[n]
        for n in o
        if n != "preset" and ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }
    for name, value in p.options.items():
        if name not in o:  # a preset naming an option bench does not have is a bug in the preset
            raise AssertionError(f"preset {p.name!r} sets unknown option {name!r}")
        if name not in given:
            o[name] = value
    o["_tags"] = {
        "preset": p.name,
        "preset_version": p.version,
        "preset_options": dict(p.options),
        "preset_overrides": given,
    }


def _check_options(ctx, mode: str, o: dict) -> None:
    """Each mode's rules, in one place: options that do not apply, and options that exclude each
    other. Empty values are errors, never 'use the default'."""
    from click.core import ParameterSource

    given = [
        n
        for n in o
        if not n.startswith("_")
        and ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    ]
    for name in given:
        if name not in MODE_OPTIONS[mode]:
            why = _WHY_NOT.get((mode, name)) or (
                "it applies only to --task"
                if name in MODE_OPTIONS["task"] - MODE_OPTIONS["timing"]
                else f"it does not apply to {'--task' if mode == 'task' else '--find-max-len'}"
            )
            fail(f"{_flag(ctx, name)} cannot be used here: {why}")
    for name in ("seq_lens", "attn", "task_spec", "memory_budget", "out_path", "ray_address"):
        if o[name] is not None and not str(o[name]).strip():
            fail(f"{_flag(ctx, name)} is empty; leave it out to use the default")
    if o["resume"] and o["overwrite"]:
        fail("--resume and --overwrite exclude each other")
    if mode == "find-max-len" and o["executor"] == "ray":
        fail("--find-max-len runs here only (each probe depends on the one before); drop --executor ray")
    if ctx.get_parameter_source("quiet_wait") not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP) and not (
        o.get("require_quiet")
    ):
        fail("--quiet-wait applies only with --require-quiet")
    if o.get("require_quiet") and o["executor"] == "ray":
        fail("--require-quiet judges this machine's load; it cannot be used with --executor ray")
    if o["executor"] != "ray" and (o["ray_address"] or o["cpus_per_point"]):
        fail(f"{'--ray-address' if o['ray_address'] else '--cpus-per-point'} applies only to --executor ray")
    if mode == "task" and o["device"] == "cuda":
        fail("--device cuda cannot be used with --task: task runs train on the CPU")


def _timing_spec(o: dict):
    """Validate a timing or find-max-len request and return (SweepSpec, executor)."""
    import torch

    from ..bench.executors import make_executor
    from ..bench.point import SweepSpec
    from ..spec import parse_seq_lens, parse_size

    lens = parse_seq_lens(o["seq_lens"] if o["seq_lens"] is not None else DEFAULT_SEQ_LENS)
    if o["attn"]:
        _variants(o["attn"])  # a typo fails before any cluster is contacted
    ex = make_executor(o["executor"], address=o["ray_address"], cpus_per_point=o["cpus_per_point"] or 1)
    device = o["device"]
    if o["executor"] == "ray":
        device = ex.resolve_device(device)  # the cluster's devices, not this machine's
    elif device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available() and o["executor"] != "ray":
        fail("--device cuda: CUDA is not available on this machine")
    # Device checks run here only when this machine has the device; a CPU-only driver of a GPU
    # cluster leaves them to the workers, whose rows say what failed.
    here = device == "cpu" or torch.cuda.is_available()
    variants = _variants(o["attn"] or _default_variants(device, bool(o["causal"]) or o["mode"] == "decode"))
    if len({v.label for v in variants}) != len(variants):
        fail("--attn lists the same variant twice")
    if here:
        _check_dtype(device, o["dtype"])
    heads = o["heads"] or 8
    if o["kv_heads"] is not None and heads % o["kv_heads"]:
        fail(f"--kv-heads {o['kv_heads']} must divide --heads {heads}")
    for v in variants:
        entry = __import__("effattn").get_entry(v.name)
        why = entry.availability(device)
        if why and o["attn"] and here:
            fail(f"{v.label}: {why}")
        if o["attn"] and o["mode"] == "decode" and not entry.facts.supports_causal:
            fail(f"{v.label} cannot decode: it does not support causal attention (--mode decode generates causally)")
    spec = SweepSpec(
        seq_lens=lens,
        variants=variants,
        device=device,
        dtype=o["dtype"],
        batch=o["batch"],
        heads=heads,
        kv_heads=o["kv_heads"],
        head_dim=o["head_dim"],
        causal=o["causal"] or o["mode"] == "decode",
        mode=o["mode"],
        level=o["level"],
        timeout_s=o["timeout_s"],
        memory_budget_bytes=parse_size(o["memory_budget"]) if o["memory_budget"] else None,
        min_run_time_s=o["min_run_time"],
        error=not o["no_error"],
        seed=o["seed"],
        inputs=o["inputs"],
        layers=o["layers"],
    )
    return spec, ex


def _variants(text: str):
    """Parse --attn. Built-in plugins are built here to check their options; third-party ones only
    have their option names checked here (no plugin code runs in effattn's own process: a plugin
    whose constructor hangs or exits cannot take the sweep with it) and are built in a measuring
    process by `_check_third_party`."""
    from ..registry import get_entry, option_names
    from ..spec import parse_variants

    variants = parse_variants(text, validate=False)
    for v in variants:
        entry = get_entry(v.name)
        if entry.source == "builtin":
            v.build()
        else:
            names, var_kw = option_names(entry.target)
            unknown = [k for k in v.options if k not in names]
            if unknown and not var_kw:
                fail(
                    f"attention {v.name!r} has no option {', '.join(map(repr, unknown))}; "
                    f"valid options: {', '.join(names) or 'none'}"
                )
    return variants


def _check_third_party(spec, isolation: str):
    """Build every third-party variant once in a measuring process, with a time limit; a failure is
    bad input (one line, exit 2, no file). Returns that process to measure with, or None."""
    from ..bench.worker import MeasuringProcess
    from ..registry import get_entry

    theirs = [v for v in spec.variants if get_entry(v.name).source != "builtin"]
    if not theirs:
        return None
    mp = MeasuringProcess()
    why = mp.check(
        [{"name": v.name, "options": v.options, "label": v.label} for v in theirs], min(spec.timeout_s, 120.0)
    )
    bad = [w for w in why if w]
    if bad or isolation != "worker":
        mp.kill()
    if bad:
        fail(bad[0])
    return mp if isolation == "worker" else None


def _results_file(o: dict, executor_name: str):
    """Open (create atomically, lock) the results file the options name, or a fresh default."""
    from ..store import ResultsFile, ResultsFileError, default_results_path

    out_path = o["out_path"]
    if out_path is None:
        try:
            out_path = default_results_path("results", o["preset"].strip() if o.get("preset") else "bench")
        except ResultsFileError as e:
            fail(str(e))
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        if out_path.startswith("results" + os.sep) and os.access(os.path.dirname(out_dir) or ".", os.W_OK):
            os.makedirs(out_dir, exist_ok=True)
        else:
            fail(f"--out {out_path}: folder {out_dir} does not exist")
    if (
        os.path.isdir(out_path)
        or not os.access(out_dir, os.W_OK)
        or (os.path.exists(out_path) and not os.access(out_path, os.W_OK))
    ):
        fail(f"--out {out_path}: cannot be written")
    mode = "resume" if o["resume"] else "overwrite" if o["overwrite"] else "new"
    rf = ResultsFile(out_path, mode, executor=executor_name)
    rf.tags = o.get("_tags")
    return rf.open()


def _timing_mode(spec, ex, o):
    from ..bench.point import base_row
    from ..bench.sweep import run_sweep
    from ..results import load, summary
    from ..store import config_key
    from .progress import ClickProgress

    ex.open(spec.device)  # a cluster that cannot hold one point fails here, before the file is touched
    isolation = "process" if o["isolate"] or getattr(ex, "isolates", False) else "worker"
    worker = _check_third_party(spec, isolation)
    rf = _results_file(o, ex.name)
    if spec.inputs == "trained":
        from ..bench.inputs import trained_model

        trained_model(spec.heads, spec.head_dim, log=log)  # train once, before the sweep
    how = "a fresh process per point" if o["isolate"] or getattr(ex, "isolates", False) else "one measuring process"
    log(
        f"effattn bench: {len(spec.variants)} variants x {len(spec.seq_lens)} lengths on {spec.device} "
        f"({spec.dtype}, {spec.mode}, {spec.level}) via {ex.describe()}, {how} -> {rf.path}"
    )
    measured = _keeping_results(
        rf.path,
        "point",
        lambda: run_sweep(
            spec,
            rf,
            isolate=o["isolate"],
            executor=ex,
            log=log,
            worker=worker,
            progress=ClickProgress(),
            require_quiet=o["require_quiet"],
            quiet_wait_s=o["quiet_wait"],
        ),
    )

    df = load(rf.path, on_problem=log)
    mine = config_key(base_row(spec, spec.variants[0], spec.seq_lens[0]))
    df = df[[config_key(r) == mine for r in df.to_dict("records")]]
    # rows arrive in completion order on Ray; tables follow --attn's order
    rank = {v.label: i for i, v in enumerate(spec.variants)}
    df = (
        df.assign(_rank=df["label"].map(rank).fillna(len(rank)))
        .sort_values(["_rank", "seq_len"], kind="stable")
        .drop(columns="_rank")
    )
    _print_summary(df, summary(df))
    click.echo(f"\nresults: {rf.path}  (effattn report {rf.path})")
    # no point ok and some an error: nothing was measured (an oom, timeout or unsupported answers
    # the question "does it fit, is it fast enough, can it run" and leaves the exit status 0)
    statuses = {r.get("status") for r in measured or []}
    if "error" in statuses and "ok" not in statuses:
        counts = {}
        for r in measured:
            counts[r.get("status")] = counts.get(r.get("status"), 0) + 1
        text = ", ".join(f"{v} {k}" for k, v in counts.items())
        click.echo(f"effattn: error: no point of this run ended ok ({text}); their reasons are above", err=True)
        sys.exit(1)


def _keeping_results(out_path, what, run):
    """Run a sweep; on Ctrl-C (exit 130), SIGTERM (143), a lost executor (exit 1) or an
    unwritable file (exit 2), say in one line that every finished {what} is in the file and how
    to complete it."""
    from ..bench.executors import ExecutorLost
    from ..bench.sweep import MachineBusy

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run()
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        if getattr(e, "sweep_complete", False):
            click.echo(f"\n{how} while shutting down: every {what} was measured and is in {out_path}", err=True)
        else:
            click.echo(f"\n{how}: every finished {what} is in {out_path}; rerun with --resume to complete it", err=True)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    except ExecutorLost as e:
        click.echo(f"effattn: error: {e}; every finished {what} is in {out_path}; rerun with --resume", err=True)
        sys.exit(1)
    except MachineBusy as e:
        click.echo(
            f"effattn: error: {e}; every {what} measured quietly is in {out_path}; rerun with --resume", err=True
        )
        sys.exit(e.exit_code)
    except OSError as e:
        fail(
            f"cannot write results to {out_path}: {e.strerror or e}; every {what} finished before is in the file: "
            "free the space (or fix the folder) and rerun with --resume"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(df, summ):
    import pandas as pd

    from ..report.build import RECOMPUTE_MARK, RECOMPUTE_NOTE, mark_recompute

    if df.empty:
        click.echo("no points")
        return
    df = mark_recompute(df)
    if df["label"].str.endswith(RECOMPUTE_MARK).any():
        summ = summ.copy()
        marked = set(df.loc[df["label"].str.endswith(RECOMPUTE_MARK), "label"].str[: -len(RECOMPUTE_MARK)])
        summ["label"] = [lb + RECOMPUTE_MARK if lb in marked else lb for lb in summ["label"]]

    def cell(r):
        if r["status"] != "ok":
            return r["status"]
        return f"{r['time_ms']:.2f}" + ("*" if r.get("loaded") is True else "")

    t = pd.DataFrame({"label": df["label"], "seq_len": df["seq_len"], "cell": df.apply(cell, axis=1)}).pivot_table(
        index="label", columns="seq_len", values="cell", aggfunc="last", sort=False
    )
    click.echo("\ntime (ms, median of the rounds) per sequence length")
    click.echo(t.to_string())
    ok = df[df["status"] == "ok"]
    decode = "mode" in df and (df["mode"] == "decode").all()
    mem_col, title = ("cache_bytes", "cache at context n (MiB)") if decode else ("peak_mem_bytes", "peak memory (MiB)")
    click.echo(f"\n{title}")
    if ok.empty:
        click.echo("(no point ended ok)")
    else:
        mem = ok.pivot_table(index="label", columns="seq_len", values=mem_col, aggfunc="last", sort=False) / 2**20
        click.echo(mem.round(3 if decode else 1).to_string())
    if decode and "bandwidth_fraction" in ok and ok["bandwidth_fraction"].notna().any():
        bw = ok.pivot_table(index="label", columns="seq_len", values="bandwidth_fraction", aggfunc="last", sort=False)
        click.echo("\nbandwidth reached by a step (% of the memory bandwidth measured in the same group)")
        click.echo((bw * 100).round(0).to_string())
    s = summ.copy()

    def interval(e, lo, hi):
        if pd.isna(e):
            return "-"
        return f"{e:.2f}" + ("" if pd.isna(lo) else f" [{lo:.2f}, {hi:.2f}]")

    s["time exponent [95%]"] = [
        interval(e, lo, hi) for e, lo, hi in zip(s["time_exponent"], s["time_exponent_lo"], s["time_exponent_hi"])
    ]
    s["memory exponent"] = ["-" if pd.isna(e) else f"{e:.2f}" for e in s["mem_exponent"]]
    if decode:
        s["cache exponent"] = s.pop("memory exponent")
    cross = [c for c in s.columns if c.startswith("faster_than_")][0]
    s[cross.replace("_", " ")] = s["crossover"].replace("", "-")
    click.echo("\nscaling (log-log fit)")
    click.echo(
        s[
            ["label", "time exponent [95%]", "cache exponent" if decode else "memory exponent", "fit_from"]
            + [cross.replace("_", " "), "points"]
        ].to_string(index=False)
    )
    if s["crossover"].str.startswith(("between", "<=")).any():
        click.echo(
            "(a range: the points' 95% intervals overlap there, so the data cannot place the crossover more precisely)"
        )
    loaded = (
        df[df.get("loaded", pd.Series(False, index=df.index)).fillna(False).astype(bool)]
        if "loaded" in df
        else df.iloc[:0]
    )
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
    errors = df[df["status"] == "error"]
    if len(errors):
        click.echo("\npoints that are errors (not measured correctly):")
        for _, r in errors.iterrows():
            why = " ".join(str(r["reason"]).split())
            click.echo(f"  {r['label']} n={r['seq_len']}: {why[:300]}" + ("..." if len(why) > 300 else ""))
    if df["label"].str.endswith(RECOMPUTE_MARK).any():
        click.echo(f"\n{RECOMPUTE_MARK.strip()}: {RECOMPUTE_NOTE}")
    faults = df[df["fault"].notna()] if "fault" in df else df.iloc[:0]
    if len(faults):
        click.echo("\nmeasurement faults (not to be trusted):")
        for _, r in faults.iterrows():
            click.echo(f"  {r['label']} n={r['seq_len']}: {r['fault']}")


def _find_max_len(spec, o):
    from ..bench.maxlen import find_max_len
    from ..bench.measure import available_memory_bytes

    lens = spec.seq_lens
    budget = spec.memory_budget_bytes or available_memory_bytes(spec.device)
    start = lens[0] if len(lens) > 1 or lens[0] != 256 else 1024
    limit = lens[-1] if len(lens) > 1 else 2**20
    _check_third_party(spec, "process")
    rf = _results_file(o, "local")
    log(f"effattn bench --find-max-len: budget {budget / 2**30:.2f} GiB, n from {start} up to {limit} -> {rf.path}")
    for note in rf.notes:
        log(note)
    results = []

    def run():
        for v in spec.variants:
            best, _, why = find_max_len(spec, v, budget, start, limit, out=rf, log=log)
            results.append((v.label, best, why))

    try:
        _keeping_results(rf.path, "probe", run)
    finally:
        rf.close()
    click.echo("\nlongest sequence within the budget")
    for label, best, why in results:
        if why:  # not the memory limit: something else stopped the search
            text = (f">= {best}" if best is not None else "unknown") + f" (the search stopped: {why})"
        else:
            text = str(best) if best is not None else f"none (oom at {start})"
        click.echo(f"  {label:40s} {text}")


def _task_mode(o):
    from ..bench.executors import make_executor
    from ..bench.sweep import read_rows
    from ..bench.tasksweep import run_task_sweep, task_summary
    from ..registry import get_entry
    from ..spec import parse_seq_lens, parse_variant, parse_variants
    from ..tasks import create_task
    from ..tasks.train import TrainSpec

    lens = parse_seq_lens(o["seq_lens"] if o["seq_lens"] is not None else "64")
    variants = parse_variants(o["attn"] or "full,linear")
    if len({v.label for v in variants}) != len(variants):
        fail("--attn lists the same variant twice")
    tv = parse_variant(o["task_spec"], validate=False)
    task = create_task(tv.name, **tv.options)
    for n in lens:
        task.check_length(n)
    # task models are small (d_model 64): 16-dim heads, as in Zoology's runs
    spec = TrainSpec(
        steps=o["steps"],
        batch_size=o["train_batch"],
        lr=o["lr"],
        d_model=o["d_model"],
        n_layers=o["layers"],
        n_heads=o["heads"] or 4,
        conv_kernel=o["conv_kernel"],
    )
    if task.kind == "lm":
        for v in variants:
            if not get_entry(v.name).facts.supports_causal:
                fail(
                    f"{v.label} cannot run {task.name}: the task trains a causal decoder and it does not support causal"
                )
    else:
        for v in variants:
            if get_entry(v.name).facts.causal_only:
                fail(f"{v.label} cannot run {task.name}: the task trains an encoder and it is causal only")
    ex = make_executor(o["executor"], address=o["ray_address"], cpus_per_point=o["cpus_per_point"] or 1)
    ex.open("cpu")
    rf = _results_file(o, ex.name)
    log(
        f"effattn bench --task {o['task_spec']}: {len(variants)} variants x {len(lens)} lengths x {o['seeds']} "
        f"seeds, {spec.steps} steps of batch {spec.batch_size} via {ex.describe()} -> {rf.path}"
    )
    _keeping_results(
        rf.path, "run", lambda: run_task_sweep(task, variants, lens, o["seeds"], spec, rf, log=log, executor=ex)
    )
    summ = task_summary([r for r in read_rows(rf.path) if r.get("task") == task.name])
    click.echo(f"\n{task.name} {task.options()}: test accuracy (mean over seeds)")
    click.echo(summ.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    click.echo(f"\nresults: {rf.path}")


@click.command("presets", cls=StrictCommand)
@click.argument("name", required=False)
def presets_cmd(name):
    """List the named sweeps of `effattn bench --preset`, or show one's options."""
    from ..presets import PRESETS, get_preset

    if name is None:
        for p in PRESETS.values():
            click.echo(f"{p.name + '@' + str(p.version):18s} {p.summary}")
        click.echo("\n`effattn presets NAME` shows one's options; `effattn bench --preset NAME [options]` runs it.")
        return
    p = get_preset(name)
    click.echo(f"{p.name} (version {p.version}): {p.summary}")
    if p.source:
        click.echo(f"follows: {p.source}")
    click.echo("options (given beside --preset, an option overrides the preset's):")
    for key, value in p.options.items():
        flag = "--" + ("task" if key == "task_spec" else "timeout" if key == "timeout_s" else key).replace("_", "-")
        click.echo(f"  {flag} {value}" if value is not True else f"  {flag}")
