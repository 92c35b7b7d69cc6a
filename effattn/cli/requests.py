"""What `effattn bench`'s options ask for: each mode's options checked (an option a mode does not
use is refused, never ignored), a preset applied, and the request turned into what the library
runs - a `SweepSpec` and its executor, the variants, the results file. Everything is validated
before any file is touched. (What imports torch is imported where a request is run: `effattn bench
--help` and a refused option answer in a tenth of a second, not the two seconds torch takes.)"""

from __future__ import annotations

import os

from click.core import ParameterSource

from ..presets import get_preset
from ..registry import check_option_names, get_entry, list_attention
from ..spec import parse_seq_lens, parse_size, parse_variant, parse_variants
from ..store import ResultsFile, ResultsFileError, default_results_path
from .common import fail

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


#: The sweep `effattn bench` runs with no --attn: a first taste that finishes in about a minute
#: and a half on 2 CPU cores and still shows the headline - one quadratic exact baseline, three
#: exact sparse patterns and three approximations, with their crossovers against `full` between
#: 512 and 4k. `--preset all-builtins` sweeps every available built-in as the default did before.
FIRST_TASTE = ("full", "sliding_window", "bigbird", "sparse", "linear", "performer", "nystrom")


def default_variants(device: str, causal: bool, every: bool = False) -> str:
    """The variants a sweep without --attn measures: FIRST_TASTE (`every`: every built-in) that
    can run on `device` with the sweep's masking."""
    names = default_builtins(device, causal)
    if every:
        return ",".join(names)
    return ",".join(n for n in names if n in FIRST_TASTE)


def default_builtins(device: str, causal: bool) -> list[str]:

    # effattn's own built-ins; the wrappers of other libraries (`wraps`: local-attention, HF, FlexAttention)
    # are compared on purpose, through --attn or the `peers` preset; and only those that compute the
    # sweep's masking (a causal-only recurrence has no row in a bidirectional sweep, nor an encoder-only
    # variant in a causal one: asked for by name, they are recorded as unsupported)
    def fits(e) -> bool:
        return e.facts.supports_causal if causal else not e.facts.causal_only

    return [
        n
        for n in list_attention()
        if get_entry(n).source == "builtin"
        and not getattr(get_entry(n).target, "wraps", None)
        and get_entry(n).availability(device) is None
        and fits(get_entry(n))
    ]


def check_dtype(device: str, dtype: str):
    import torch

    try:
        a = torch.ones(8, 8, device=device, dtype=getattr(torch, dtype))
        torch.nn.functional.scaled_dot_product_attention(a[None, None], a[None, None], a[None, None])
    except Exception as e:  # noqa: BLE001 - whatever the probe raises, the dtype cannot run here
        fail(f"--dtype {dtype} is not supported on {device}: {str(e).splitlines()[0]}")


def flag(ctx, name: str) -> str:
    for p in ctx.command.params:
        if p.name == name:
            return p.opts[0]
    return name


def apply_preset(ctx, o: dict) -> None:
    """Fill the options the user did not give from the preset; remember both for the rows."""

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


def check_options(ctx, mode: str, o: dict) -> None:
    """Each mode's rules, in one place: options that do not apply, and options that exclude each
    other. Empty values are errors, never 'use the default'."""

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
            fail(f"{flag(ctx, name)} cannot be used here: {why}")
    for name in ("seq_lens", "attn", "task_spec", "memory_budget", "out_path", "ray_address"):
        if o[name] is not None and not str(o[name]).strip():
            fail(f"{flag(ctx, name)} is empty; leave it out to use the default")
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


def timing_spec(o: dict):
    """Validate a timing or find-max-len request and return (SweepSpec, executor)."""
    import torch

    from ..bench.executors import make_executor
    from ..bench.spec import SweepSpec

    lens = parse_seq_lens(o["seq_lens"] if o["seq_lens"] is not None else DEFAULT_SEQ_LENS)
    if o["attn"]:
        parse_attn(o["attn"])  # a typo fails before any cluster is contacted
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
    variants = parse_attn(o["attn"] or default_variants(device, bool(o["causal"]) or o["mode"] == "decode"))
    if len({v.label for v in variants}) != len(variants):
        fail("--attn lists the same variant twice")
    if here:
        check_dtype(device, o["dtype"])
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


def parse_attn(text: str):
    """Parse --attn. Built-in plugins are built here to check their options; third-party ones only
    have their option names checked here (no plugin code runs in effattn's own process: a plugin
    whose constructor hangs or exits cannot take the sweep with it) and are built in a measuring
    process by `check_third_party`."""
    variants = parse_variants(text, validate=False)
    for v in variants:
        if get_entry(v.name).source == "builtin":
            v.build()
        else:
            check_option_names(v.name, v.options)
    return variants


def check_third_party(spec, isolation: str):
    """Build every third-party variant once in a measuring process, with a time limit; a failure is
    bad input (one line, exit 2, no file). Returns that process to measure with, or None."""
    from ..bench.worker import MeasuringProcess

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


def results_file(o: dict, executor_name: str):
    """Open (create atomically, lock) the results file the options name, or a fresh default."""

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


def task_request(o: dict):
    """A --task request: (task, variants, lengths, TrainSpec), each variant able to train on it."""
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
    for v in variants:
        facts = get_entry(v.name).facts
        if task.kind == "lm" and not facts.supports_causal:
            fail(f"{v.label} cannot run {task.name}: the task trains a causal decoder and it does not support causal")
        if task.kind != "lm" and facts.causal_only:
            fail(f"{v.label} cannot run {task.name}: the task trains an encoder and it is causal only")
    return task, variants, lens, spec
