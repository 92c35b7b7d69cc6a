"""`effattn bench`: the sweep command. Attaches itself to the CLI group."""
from __future__ import annotations

import os
import sys
import time

import click

from ..cli import cli, fail

DEFAULT_SEQ_LENS = "256,512,1k,2k,4k"


def _default_variants(device: str) -> str:
    from ..registry import get_entry, list_attention

    return ",".join(n for n in list_attention() if get_entry(n).source == "builtin"
                    and get_entry(n).availability(device) is None)


def _check_dtype(device: str, dtype: str):
    import torch

    if dtype not in ("float32", "bfloat16", "float16", "float64"):
        fail(f"--dtype {dtype!r}: choose float32, bfloat16, float16 or float64")
    try:
        a = torch.ones(8, 8, device=device, dtype=getattr(torch, dtype))
        torch.nn.functional.scaled_dot_product_attention(a[None, None], a[None, None], a[None, None])
    except Exception as e:  # noqa: BLE001
        fail(f"--dtype {dtype} is not supported on {device}: {str(e).splitlines()[0]}")


@cli.command()
@click.option("--seq-lens", default=None, help=f"comma list; k = 1024 [default: {DEFAULT_SEQ_LENS}; 64 with --task]")
@click.option("--attn", "attn", default=None, help="NAME[:KEY=VALUE...] comma list [default: every available built-in]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=None, help="[default: 8; 4 with --task]")
@click.option("--head-dim", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--causal", is_flag=True)
@click.option("--mode", type=click.Choice(["fwd", "fwdbwd"]), default="fwd", show_default=True)
@click.option("--level", type=click.Choice(["attention", "layer", "model"]), default="attention", show_default=True)
@click.option("--out", "out_path", default=None, help="JSON-lines results file [default: results/bench-<time>.jsonl]")
@click.option("--resume", is_flag=True, help="complete only the points missing from --out")
@click.option("--overwrite", is_flag=True, help="replace an existing --out instead of refusing")
@click.option("--isolate", is_flag=True, help="each point in its own process (a crash or OOM loses only it)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="seconds per point")
@click.option("--memory-budget", default=None, help="e.g. 4GB: a point above it is recorded as oom")
@click.option("--min-run-time", type=click.FloatRange(min=0, min_open=True), default=0.2, show_default=True,
              help="seconds of timed repeats per point")
@click.option("--no-error", is_flag=True, help="skip the error-vs-full columns")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--inputs", type=click.Choice(["random", "trained"]), default="random", show_default=True,
              help="q, k, v: Gaussian, or from a backbone trained on MQAR (peaked attention)")
@click.option("--find-max-len", is_flag=True,
              help="find each variant's longest length within --memory-budget (default: free memory)")
@click.option("--task", "task_spec", default=None, help="train on a task instead of timing: NAME[:KEY=VALUE...] "
              "(mqar, listops, retrieval_distance)")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="--task: training steps")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True,
              help="--task: peak learning rate (AdamW, 50 warm-up steps, linear decay)")
@click.option("--train-batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True, help="--task: repeats")
@click.option("--d-model", type=click.IntRange(min=1), default=64, show_default=True, help="--task: model width")
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True, help="--task: layers")
@click.option("--conv-kernel", type=click.IntRange(min=0), default=0, show_default=True,
              help="--task: short causal conv before attention (0 = off)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="where points run: here, one at a time, or as tasks on a Ray cluster")
@click.option("--ray-address", default=None, help="--executor ray: the cluster (HOST:PORT, ray://HOST:PORT or auto) "
              "[default: $RAY_ADDRESS, else a new local instance]")
@click.option("--cpus-per-point", type=click.IntRange(min=1), default=None,
              help="--executor ray: CPUs (and torch threads) each point gets [default: 1]")
def bench(seq_lens, attn, device, dtype, batch, heads, head_dim, causal, mode, level, out_path, resume, overwrite,
          isolate, timeout_s, memory_budget, min_run_time, no_error, seed, find_max_len, task_spec, steps, lr,
          train_batch, seeds, d_model, layers, conv_kernel, inputs, executor, ray_address, cpus_per_point):
    """Sweep sequence lengths and measure time, memory and error of attention variants."""
    import torch

    from ..results import load, summary
    from ..spec import parse_seq_lens, parse_size, parse_variants
    from .executors import make_executor
    from .point import SweepSpec
    from .sweep import run_sweep

    # --- validate everything before touching any file
    if executor != "ray" and (ray_address or cpus_per_point):
        fail(f"{'--ray-address' if ray_address else '--cpus-per-point'} applies only to --executor ray")
    if executor == "ray" and find_max_len:
        fail("--find-max-len runs here only (each probe depends on the one before); drop --executor ray")
    lens = parse_seq_lens(seq_lens or ("64" if task_spec else DEFAULT_SEQ_LENS))
    task_heads = heads or 4  # task models are small (d_model 64): 16-dim heads, as in Zoology's runs
    heads = heads or 8
    if task_spec and not attn:
        attn = "full,linear"
    if attn:
        parse_variants(attn)  # a typo fails before any cluster is contacted
    ex = make_executor(executor, address=ray_address, cpus_per_point=cpus_per_point or 1)
    if executor == "ray":
        device = ex.resolve_device(device)  # the cluster's devices, not this machine's
    elif device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available() and executor != "ray":
        fail("--device cuda: CUDA is not available on this machine")
    # Device checks run here only when this machine has the device; a CPU-only driver of a GPU
    # cluster leaves them to the workers, whose rows say what failed.
    here = device == "cpu" or torch.cuda.is_available()
    variants = parse_variants(attn or _default_variants(device))
    if len({v.label for v in variants}) != len(variants):
        fail("--attn lists the same variant twice")
    if here:
        _check_dtype(device, dtype)
    budget = parse_size(memory_budget) if memory_budget else None
    if out_path is None:
        out_path = os.path.join("results", time.strftime("bench-%Y%m%d-%H%M%S.jsonl"))
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        if out_path.startswith("results" + os.sep) and os.access(os.path.dirname(out_dir) or ".", os.W_OK):
            os.makedirs(out_dir, exist_ok=True)
        else:
            fail(f"--out {out_path}: folder {out_dir} does not exist")
    if os.path.isdir(out_path) or not os.access(out_dir, os.W_OK) or (
            os.path.exists(out_path) and not os.access(out_path, os.W_OK)):
        fail(f"--out {out_path}: cannot be written")
    if os.path.exists(out_path) and os.path.getsize(out_path) and not (resume or overwrite):
        fail(f"--out {out_path} already holds results; use --resume to complete it or --overwrite to replace it")
    for v in variants:
        why = __import__("effattn").get_entry(v.name).availability(device)
        if why and attn and here:
            fail(f"{v.label}: {why}")

    spec = SweepSpec(seq_lens=lens, variants=variants, device=device, dtype=dtype, batch=batch, heads=heads,
                     head_dim=head_dim, causal=causal, mode=mode, level=level, timeout_s=timeout_s,
                     memory_budget_bytes=budget, min_run_time_s=min_run_time, error=not no_error, seed=seed,
                     inputs=inputs)
    if inputs == "trained":
        if level != "attention":
            fail("--inputs trained applies to --level attention")
        from .inputs import trained_model

        trained_model(heads, head_dim, log=lambda m: click.echo(m, err=True))  # train once, before the sweep
    if find_max_len:
        return _find_max_len(spec, out_path, budget, lens)
    if task_spec:
        return _task_mode(task_spec, variants, lens, seeds, out_path, resume,
                          dict(steps=steps, batch_size=train_batch, lr=lr, d_model=d_model, n_layers=layers,
                               n_heads=task_heads, conv_kernel=conv_kernel), ex)
    ex.open(device)
    click.echo(f"effattn bench: {len(variants)} variants x {len(lens)} lengths on {device} ({dtype}, {mode}, "
               f"{level}) via {ex.describe()} -> {out_path}", err=True)
    _keeping_results(out_path, "point", lambda: run_sweep(spec, out_path, resume=resume, isolate=isolate,
                                                          executor=ex))

    df = load(out_path)
    df = df[(df["mode"] == mode) & (df["level"] == level) & (df["causal"] == causal)]
    # rows arrive in completion order on Ray; tables follow --attn's order
    rank = {v.label: i for i, v in enumerate(variants)}
    df = df.assign(_rank=df["label"].map(rank).fillna(len(rank))).sort_values(
        ["_rank", "seq_len"], kind="stable").drop(columns="_rank")
    _print_summary(df, summary(df))
    click.echo(f"\nresults: {out_path}  (effattn report {out_path})")


def _keeping_results(out_path, what, run):
    """Run a sweep; on Ctrl-C (exit 130), a lost executor (exit 1) or an unwritable file (exit 2),
    say in one line that every finished {what} is in the file and how to complete it."""
    from .executors import ExecutorLost

    try:
        return run()
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: every finished {what} is in {out_path}; rerun with --resume to complete it",
                   err=True)
        sys.exit(130)
    except ExecutorLost as e:
        click.echo(f"effattn: error: {e}; every finished {what} is in {out_path}; rerun with --resume", err=True)
        sys.exit(1)
    except OSError as e:
        fail(f"cannot write results to {out_path}: {e.strerror or e}")


def _print_summary(df, summ):
    import pandas as pd

    if df.empty:
        click.echo("no points")
        return
    cell = df.apply(lambda r: f"{r['time_ms']:.2f}" if r["status"] == "ok" else r["status"], axis=1)
    t = pd.DataFrame({"label": df["label"], "seq_len": df["seq_len"], "cell": cell}).pivot_table(
        index="label", columns="seq_len", values="cell", aggfunc="last", sort=False)
    click.echo("\ntime (ms) per sequence length")
    click.echo(t.to_string())
    mem = df[df["status"] == "ok"].pivot_table(index="label", columns="seq_len", values="peak_mem_bytes",
                                               aggfunc="last", sort=False) / 2**20
    click.echo("\npeak memory (MiB)")
    click.echo(mem.round(1).to_string())
    s = summ.copy()
    fmt = lambda e, se: "-" if pd.isna(e) else (f"{e:.2f}" + ("" if pd.isna(se) else f" ± {se:.2f}"))
    s["time exponent"] = [fmt(e, se) for e, se in zip(s["time_exponent"], s["time_exponent_se"])]
    s["memory exponent"] = [fmt(e, se) for e, se in zip(s["mem_exponent"], s["mem_exponent_se"])]
    cross = [c for c in s.columns if c.startswith("faster_than_")][0]
    s[cross] = s[cross].map(lambda x: "-" if pd.isna(x) else str(int(x)))
    click.echo("\nscaling (log-log fit)")
    click.echo(s[["label", "time exponent", "memory exponent", "fit_from", cross, "points"]].to_string(index=False))


def _find_max_len(spec, out_path, budget, lens):
    from .maxlen import available_memory_bytes, find_max_len

    budget = budget or available_memory_bytes(spec.device)
    start = lens[0] if len(lens) > 1 or lens[0] != 256 else 1024
    limit = lens[-1] if len(lens) > 1 else 2**20
    click.echo(f"effattn bench --find-max-len: budget {budget / 2**30:.2f} GiB, n from {start} up to {limit} "
               f"-> {out_path}", err=True)
    results = []
    with open(out_path, "w") as f:
        for v in spec.variants:
            best, _ = find_max_len(spec, v, budget, start, limit, out=f, log=lambda m: click.echo(m, err=True))
            results.append((v.label, best))
    click.echo("\nlongest sequence within the budget")
    for label, best in results:
        click.echo(f"  {label:40s} {best if best is not None else 'none (fails at ' + str(start) + ')'}")


def _task_mode(task_spec, variants, lens, seeds, out_path, resume, train_kwargs, ex):
    from ..registry import get_entry
    from ..spec import parse_variant
    from ..tasks import create_task
    from ..tasks.train import TrainSpec
    from .tasksweep import run_task_sweep, task_summary

    tv = parse_variant(task_spec, validate=False)
    task = create_task(tv.name, **tv.options)
    for n in lens:
        task.check_length(n)
    if train_kwargs["d_model"] % train_kwargs["n_heads"]:
        fail(f"--d-model {train_kwargs['d_model']} is not divisible by --heads {train_kwargs['n_heads']}")
    if task.kind == "lm":
        for v in variants:
            if not get_entry(v.name).facts.supports_causal:
                fail(f"{v.label} cannot run {task.name}: the task trains a causal decoder and it does not support causal")
    spec = TrainSpec(**train_kwargs)
    ex.open("cpu")
    click.echo(f"effattn bench --task {task_spec}: {len(variants)} variants x {len(lens)} lengths x {seeds} seeds, "
               f"{spec.steps} steps of batch {spec.batch_size} via {ex.describe()} -> {out_path}", err=True)
    _keeping_results(out_path, "run", lambda: run_task_sweep(
        task, variants, lens, seeds, spec, out_path, resume, log=lambda m: click.echo(m, err=True), executor=ex))
    from .sweep import read_rows

    summ = task_summary([r for r in read_rows(out_path) if r.get("task") == task.name])
    click.echo(f"\n{task.name} {task.options()}: test accuracy (mean over seeds)")
    click.echo(summ.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    click.echo(f"\nresults: {out_path}")
