"""`effattn bench`: the sweep command.

Three modes share the command: a timing sweep (the default), `--find-max-len` and `--task`. Each
mode's options are listed once, in MODE_OPTIONS; an option given to a mode that does not use it
is an error, never silently ignored. Everything is validated before any file is touched; then the
results file is opened (created atomically, locked for the run) by `effattn.store.ResultsFile`,
its one writer.
"""

from __future__ import annotations

import math
import signal
import sys

import click

from ..presets import PRESETS, get_preset
from .common import StrictCommand, fail, log
from .requests import (
    DEFAULT_SEQ_LENS,
    apply_preset,
    check_options,
    check_third_party,
    results_file,
    task_request,
    timing_spec,
)


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


@click.command(cls=StrictCommand)
@click.option("--seq-lens", default=None, help=f"comma list; k = 1024 [default: {DEFAULT_SEQ_LENS}; 64 with --task]")
@click.option(
    "--attn",
    "attn",
    default=None,
    help="NAME[:KEY=VALUE...] comma list [default: full, sliding_window, bigbird, sparse, linear, performer, "
    "nystrom, those that compute the sweep's masking; --preset all-builtins: every built-in]",
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
        apply_preset(ctx, o)
    mode = "task" if o["task_spec"] is not None else "find-max-len" if o["find_max_len"] else "timing"
    check_options(ctx, mode, o)
    if mode == "task":
        return _task_mode(o)
    spec, ex = timing_spec(o)
    if mode == "find-max-len":
        return _find_max_len(spec, o)
    return _timing_mode(spec, ex, o)


def _timing_mode(spec, ex, o):
    from ..bench.inputs import trained_model
    from ..bench.runner import isolation_for
    from ..bench.sweep import run_sweep
    from .progress import ClickProgress
    from .summary import print_closing_advice, print_sweep_summary

    ex.open(spec.device)  # a cluster that cannot hold one point fails here, before the file is touched
    isolation = isolation_for(isolate=o["isolate"], executor=ex)
    worker = check_third_party(spec, isolation)
    rf = results_file(o, ex.name)
    if spec.inputs == "trained":
        trained_model(spec.heads, spec.head_dim, log=log)  # train once, before the sweep
    how = "a fresh process per point" if isolation == "process" else "one measuring process"
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
            isolation=isolation,
            executor=ex,
            log=log,
            worker=worker,
            progress=ClickProgress(),
            require_quiet=o["require_quiet"],
            quiet_wait_s=o["quiet_wait"],
        ),
    )
    print_sweep_summary(rf.path, spec, log)
    print_closing_advice(rf.path, spec, log)
    click.echo(f"\nresults: {rf.path}  (effattn report {rf.path})")
    # no point ok and some an error: nothing was measured (an oom, timeout or unsupported answers
    # the question "does it fit, is it fast enough, can it run" and leaves the exit status 0)
    statuses = [r.get("status") for r in measured or []]
    if "error" in statuses and "ok" not in statuses:
        text = ", ".join(f"{statuses.count(k)} {k}" for k in dict.fromkeys(statuses))
        click.echo(f"effattn: error: no point of this run ended ok ({text}); their reasons are above", err=True)
        sys.exit(1)


def _keeping_results(out_path, what, run):
    """Run a sweep; on Ctrl-C (exit 130), SIGTERM (143), a lost executor (exit 1), a machine that
    stays busy under --require-quiet (exit 3) or an unwritable file (exit 2), say in one line that
    every finished {what} is in the file and how to complete it."""
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


def _find_max_len(spec, o):
    from ..bench.maxlen import find_max_len
    from ..bench.measure import available_memory_bytes

    lens = spec.seq_lens
    budget = spec.memory_budget_bytes or available_memory_bytes(spec.device)
    start = lens[0] if len(lens) > 1 or lens[0] != 256 else 1024
    limit = lens[-1] if len(lens) > 1 else 2**20
    check_third_party(spec, "process")
    rf = results_file(o, "local")
    log(f"effattn bench --find-max-len: budget {budget / 2**30:.2f} GiB, n from {start} up to {limit} -> {rf.path}")
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

    task, variants, lens, spec = task_request(o)
    ex = make_executor(o["executor"], address=o["ray_address"], cpus_per_point=o["cpus_per_point"] or 1)
    ex.open("cpu")
    rf = results_file(o, ex.name)
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
