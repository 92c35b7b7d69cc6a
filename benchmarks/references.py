"""The newer variants against their reference implementations (issue #15): for each of `nsa`,
`moba`, `gla`, `deltanet`, `gated_deltanet` and `sliding_window_sinks`, its speed, memory and error
against its reference implementation and against `full` (SDPA), on the same q, k, v and the same
gates and parameters.

    python benchmarks/references.py run --out results/references-cpu.jsonl
    python benchmarks/references.py run --quick --out /tmp/references-quick.jsonl   # checks the script
    python benchmarks/references.py table results/references-cpu.jsonl

Each case is a plugin (effattn.create_attention, with its options) and one reference:

- `gla`, `deltanet`, `gated_deltanet`: fla-core's `naive_recurrent_gla`, `delta_rule_recurrence`,
  `naive_recurrent_gated_delta_rule` (fla/ops/*/naive.py; float32 loops over tokens), fed the
  plugin's own gates (log gate; beta; beta and log decay) and, for the delta rules, its
  L2-normalised q and k. Independent.
- `nsa` (the paper's settings): effattn's `nsa_reference`, the definition dense in float64.
  effattn's own.
- `nsa:fla` (l = d = l' = 64, local_blocks 2, where fla's naive NSA applies): fla's
  `naive_nsa_topk` (its own block choice), `naive_nsa_compression` and `naive_nsa_selection`, plus
  effattn's `sliding_window(w - 1)` standing in for fla's flash-attn window, and the plugin's
  gates. Independent but for the window branch.
- `moba`: effattn's `moba_reference`, dense in float64, written to the paper: effattn's own.
- `sliding_window_sinks`: a dense masked float64 softmax over the plugin's own `dense_mask`.

All calls are causal (the six are decoder attentions; fla's references and gla/deltanet/
gated_deltanet are causal only), batch 1, 4 heads, head_dim 64, float32 inputs (q, k, v standard
normal, seeded). For each case and length n (`--lengths`, default 1024,4096; `--quick`: 128,256
with the options scaled down so that the block selections really choose) the rows are:

- `fwd` and `fwdbwd`: median seconds per call of ours, the reference and `full` (SDPA, causal),
  timed in interleaved rounds (each round runs every callable once, or a short block of calls, in
  an order shuffled per round), and the ratios ours/reference, ours/full and reference/full: a bare
  time means nothing across machines, a ratio measured in one run does. The forward runs under
  no_grad; forward+backward is one forward with autograd and `torch.autograd.grad` into q, k, v and
  the plugin's parameters (the reference computes the gates from the same parameters, so its
  backward reaches them too).
- `memory`: peak bytes allocated by one forward (no_grad) above what was allocated before it,
  from the CPU profiler's allocator events (effattn.bench.measure.peak_memory_bytes), for all three.
- `error_float32`: max abs and relative Frobenius difference of ours (float32) against the
  reference (as it computes: fla's in float32, the dense ones in float64 on the float32 inputs),
  and of ours against `full` in float32: the approximation error relative to exact attention.
- `error_float64` (only where the reference takes float64): the same with ours, its parameters
  and `full` in float64.

A reference whose single call (forward, or forward+backward) runs past `--max-ref-seconds` is
interrupted (SIGALRM, checked between Python statements: the loop-over-tokens references stop
within a step) and recorded as "skipped: too slow"; a slow reference takes part in fewer rounds
(at least 3). Run nothing else meanwhile: the rounds share the machine with whatever else runs.
`table FILE` prints the rows as markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import signal
import statistics
import sys
import time
from pathlib import Path

LENGTHS, QUICK_LENGTHS = "1024,4096", "128,256"
B, H, D = 1, 4, 64
FLA_NOTE = "fla-core's naive references compute in float32 whatever they are given"

#: (case name, variant, options, quick options, reference, independent?)
CASES = [
    ("gla", "gla", {"head_dim": D}, {"head_dim": D}, "fla naive_recurrent_gla", True),
    ("deltanet", "deltanet", {"head_dim": D}, {"head_dim": D}, "fla delta_rule_recurrence", True),
    ("gated_deltanet", "gated_deltanet", {"head_dim": D}, {"head_dim": D},
     "fla naive_recurrent_gated_delta_rule", True),
    ("nsa", "nsa", {}, dict(block_size=8, block_stride=4, select_size=16, top_n=4, window=32),
     "effattn nsa_reference (dense float64)", False),
    ("nsa:fla", "nsa", dict(block_size=64, block_stride=64, select_size=64, top_n=16, window=512, local_blocks=2),
     dict(block_size=16, block_stride=16, select_size=16, top_n=4, window=32, local_blocks=2),
     "fla naive NSA (topk + compression + selection) + effattn sliding_window", True),
    ("moba", "moba", {}, dict(block_size=16, top_k=3), "effattn moba_reference (dense float64)", False),
    ("sliding_window_sinks", "sliding_window_sinks", {}, dict(window=32, sinks=4),
     "dense masked softmax, float64", False),
]  # fmt: skip
CASE_NAMES = [c[0] for c in CASES]
MEASURES = ("fwd", "fwdbwd", "memory", "error_float32", "error_float64")


class Fail(Exception):
    """A bad input: one line to stderr, exit status 2."""


class TooSlow(Exception):
    pass


# ----------------------------------------------------------------------------- fla's naive references
def fla_naive(rel: str):
    """fla/ops/<rel>.py loaded without Triton (effattn.fla_reference), or None."""
    from effattn import fla_reference

    return fla_reference.load(rel)


# ----------------------------------------------------------------------------- the references
def _l2(x):
    """The delta rules' L2 normalisation of q and k (docs/semantics.md)."""
    return x / (x * x).sum(-1, keepdim=True).add(1e-6).sqrt()


def _bthd(x):
    return x.transpose(1, 2).contiguous()


def make_reference(case: str, attn):
    """(fn(q, k, v) -> (B, H, n, Dv) tensor, takes_float64) for a case, or (None, reason)."""
    import torch

    from effattn import create_attention

    if case == "gla":
        mod = fla_naive("gla/naive")
        if mod is None:
            return None, "skipped: fla-core not installed (pip install 'effattn[peers]')"

        def gla(q, k, v):
            o, _ = mod.naive_recurrent_gla(*(_bthd(t) for t in (q, k, v, attn.log_gate(k))))
            return o.transpose(1, 2)

        return gla, False
    if case == "deltanet":
        mod = fla_naive("delta_rule/naive")
        if mod is None:
            return None, "skipped: fla-core not installed (pip install 'effattn[peers]')"

        def delta(q, k, v):
            beta, _ = attn.gates(k)
            o, _ = mod.delta_rule_recurrence(_l2(q), _l2(k), v, beta)
            return o

        return delta, False
    if case == "gated_deltanet":
        mod = fla_naive("gated_delta_rule/naive")
        if mod is None:
            return None, "skipped: fla-core not installed (pip install 'effattn[peers]')"

        def gated(q, k, v):
            beta, log_alpha = attn.gates(k)
            o, _ = mod.naive_recurrent_gated_delta_rule(*(_bthd(t) for t in (_l2(q), _l2(k), v, beta, log_alpha)))
            return o.transpose(1, 2)

        return gated, False
    if case == "nsa":
        from effattn.attention.nsa import nsa_reference

        return (lambda q, k, v: nsa_reference(attn, q, k, v, True)), True
    if case == "nsa:fla":
        mod = fla_naive("nsa/naive")
        if mod is None:
            return None, "skipped: fla-core has no fla/ops/nsa/naive.py (pip install 'effattn[peers]')"
        bs, top_n, w = attn.block_size, attn.top_n, attn.window
        swa = create_attention("sliding_window", window=w - 1)

        def nsa_fla(q, k, v):
            n, d = q.shape[2], q.shape[3]
            scale = d**-0.5
            # fla compresses non-overlapping blocks by mean pooling (the last one partial)
            kc, vc = (torch.stack([x[:, :, s : s + bs].mean(2) for s in range(0, n, bs)], 2) for x in (k, v))
            with torch.no_grad():
                idx = mod.naive_nsa_topk(_bthd(q), _bthd(kc), top_n, bs, scale)  # fla's own choice
            o_cmp, _ = mod.naive_nsa_compression(_bthd(q), _bthd(kc), _bthd(vc), bs, scale)
            o_slc = mod.naive_nsa_selection(_bthd(q), _bthd(k), _bthd(v), idx, bs, scale)
            g = torch.sigmoid(q @ attn.gate_weight[:d].to(q.dtype) + attn.gate_bias.to(q.dtype))
            o_swa = swa(q, k, v, causal=True)
            return g[..., 0:1] * _bthd(o_cmp).to(q.dtype) + g[..., 1:2] * _bthd(o_slc).to(q.dtype) + g[..., 2:3] * o_swa

        return nsa_fla, False
    if case == "moba":
        from effattn.attention.moba import moba_reference

        return (lambda q, k, v: moba_reference(q, k, v, attn.block_size, attn.top_k, True)), True
    if case == "sliding_window_sinks":
        masks = {}

        def dense(q, k, v):
            n = q.shape[2]
            if n not in masks:
                masks[n] = attn.dense_mask(n, n, True)
            q, k, v = q.double(), k.double(), v.double()
            s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            return s.masked_fill(~masks[n], float("-inf")).softmax(-1) @ v

        return dense, True
    raise AssertionError(case)


# ----------------------------------------------------------------------------- measuring
def _alarm(seconds: float):
    def handler(signum, frame):
        raise TooSlow()

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _disarm():
    signal.setitimer(signal.ITIMER_REAL, 0)


def timed_first(fn, limit: float | None):
    """(result, seconds) of one call, interrupted past `limit` seconds (TooSlow)."""
    if limit:
        _alarm(limit)
    try:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0
    finally:
        if limit:
            _disarm()


def interleaved(fns: dict, first_s: dict, rounds: int, min_block_s: float, budget_s: dict, seed: int) -> dict:
    """Median seconds per call of each callable, over `rounds` rounds; in each round every callable
    runs one block of calls (enough for `min_block_s`, from its first calls' time), in an order
    shuffled per round. A callable with a budget (the reference) takes part in the first
    max(3, budget / its call time) rounds only. Returns {label: {median_s, spread, samples}}."""
    rng = random.Random(seed)
    reps = {lab: max(1, min(100, math.ceil(min_block_s / max(first_s[lab], 1e-6)))) for lab in fns}
    allowed = {
        lab: max(3, min(rounds, int(budget_s[lab] / max(first_s[lab], 1e-9)))) if lab in budget_s else rounds
        for lab in fns
    }
    samples = {lab: [] for lab in fns}
    for _ in range(rounds):
        order = [lab for lab in fns if len(samples[lab]) < allowed[lab]]
        rng.shuffle(order)
        for lab in order:
            fn, r = fns[lab], reps[lab]
            t0 = time.perf_counter()
            for _ in range(r):
                fn()
            samples[lab].append((time.perf_counter() - t0) / r)
    out = {}
    for lab, xs in samples.items():
        med = statistics.median(xs)
        q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [med, med, med]
        out[lab] = {"median_s": med, "iqr_ratio": (q[2] - q[0]) / med if med else 0.0, "samples": len(xs),
                    "calls_per_sample": reps[lab]}  # fmt: skip
    return out


def errors(a, b) -> dict:
    a, b = a.detach().double(), b.detach().double()
    return {
        "max_abs": float((a - b).abs().max()),
        "rel_fro": float((a - b).norm() / b.norm().clamp_min(1e-300)),
        "ref_max_abs": float(b.abs().max()),
    }


def _env() -> dict:
    import torch

    from effattn.env import environment

    e = environment()
    return {k: e.get(k) for k in ("effattn", "torch", "python", "cpu", "cpu_count", "git_commit")} | {
        "threads": torch.get_num_threads()
    }


def measure_case(case, n: int, quick: bool, args, env: dict, emit) -> None:
    import torch

    from effattn import create_attention
    from effattn.bench.measure import peak_memory_bytes

    name, variant, opts, qopts, ref_name, independent = case
    opts = dict(qopts if quick else opts)
    base = {"case": name, "variant": variant, "options": opts, "reference_impl": ref_name,
            "reference_independent": independent, "n": n, "batch": B, "heads": H, "head_dim": D,
            "causal": True, "dtype": "float32", "env": env}  # fmt: skip
    attn = create_attention(variant, **opts)
    full = create_attention("full")
    ref, takes64 = make_reference(name, attn)
    g = torch.Generator().manual_seed(args.seed + n)
    q, k, v = (torch.randn(B, H, n, D, generator=g) for _ in range(3))
    gout = torch.randn(B, H, n, D, generator=g)
    params = list(attn.parameters())

    def ours_fn(q, k, v):
        return attn(q, k, v, causal=True)

    def full_fn(q, k, v):
        return full(q, k, v, causal=True)

    fns = {"ours": ours_fn, "full": full_fn}
    if ref is not None:
        fns["reference"] = ref
    skipped = {} if ref is not None else {"reference": takes64}  # takes64 holds the reason then

    # -- forward: first calls (checked, timed, interrupted when too slow), errors, memory
    outs, first = {}, {}
    with torch.no_grad():
        for lab, fn in fns.items():
            try:
                limit = args.max_ref_seconds if lab == "reference" else None
                outs[lab], first[lab] = timed_first(lambda: fn(q, k, v), limit)
            except TooSlow:
                skipped[lab] = f"skipped: too slow (one forward > {args.max_ref_seconds:g} s)"
            except Exception as e:  # noqa: BLE001 - a failing reference is a row, not the end of the run
                skipped[lab] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        for lab in list(outs):
            if not torch.isfinite(outs[lab]).all():
                skipped[lab] = "error: non-finite output"
                outs.pop(lab)
    live = {lab: fn for lab, fn in fns.items() if lab not in skipped}

    def speed_row(measure, res):
        row = dict(base, measure=measure, unit="s")
        for lab in ("ours", "reference", "full"):
            row[lab] = res[lab]["median_s"] if lab in res else skipped.get(lab, "not measured")
            if lab in res:
                row[f"{lab}_iqr_ratio"] = res[lab]["iqr_ratio"]
                row[f"{lab}_samples"] = res[lab]["samples"]
        num = lambda x: isinstance(x, float)
        for a, b in (("ours", "reference"), ("ours", "full"), ("reference", "full")):
            row[f"{a}_over_{b}"] = row[a] / row[b] if num(row[a]) and num(row[b]) else None
        emit(row)

    budget = {"reference": args.max_ref_seconds * args.repeats / 2}
    with torch.no_grad():
        for lab, fn in live.items():  # a second call: plans and allocator warmed, a fairer block size
            _, t = timed_first(lambda: fn(q, k, v), None)
            first[lab] = min(first[lab], t)
        res = interleaved({lab: (lambda fn=fn: fn(q, k, v)) for lab, fn in live.items()}, first, args.repeats,
                          args.min_block, budget, args.seed)  # fmt: skip
    speed_row("fwd", res)

    # -- forward + backward, into q, k, v and the plugin's parameters
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def fb(fn):
        def call():
            out = fn(qg, kg, vg)
            return torch.autograd.grad(out, [qg, kg, vg, *params], gout.to(out.dtype), allow_unused=True)

        return call

    fb_live, fb_first = {}, {}
    for lab, fn in live.items():
        try:
            _, fb_first[lab] = timed_first(fb(fn), args.max_ref_seconds if lab == "reference" else None)
            _, t = timed_first(fb(fn), args.max_ref_seconds if lab == "reference" else None)
            fb_first[lab] = min(fb_first[lab], t)
            fb_live[lab] = fb(fn)
        except TooSlow:
            skipped[lab] = f"skipped: too slow (one forward+backward > {args.max_ref_seconds:g} s)"
        except Exception as e:  # noqa: BLE001
            skipped[lab] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    res = interleaved(fb_live, fb_first, args.repeats, args.min_block, budget, args.seed + 1)
    speed_row("fwdbwd", res)
    for lab in live:  # the forward rows below are not affected by a backward that was too slow
        if skipped.get(lab, "").startswith("skipped: too slow (one forward+backward"):
            skipped.pop(lab)

    # -- peak memory of one forward
    row = dict(base, measure="memory", unit="bytes")
    for lab in ("ours", "reference", "full"):
        if lab in live:
            with torch.no_grad():
                row[lab] = peak_memory_bytes(lambda fn=live[lab]: fn(q, k, v), "cpu")
        else:
            row[lab] = skipped.get(lab, "not measured")
    ok = isinstance(row["ours"], int) and isinstance(row["reference"], int) and row["reference"] > 0
    row["ours_over_reference"] = row["ours"] / row["reference"] if ok else None
    row["ours_over_full"] = row["ours"] / row["full"] if isinstance(row["full"], int) and row["full"] else None
    emit(row)

    # -- errors
    row = dict(base, measure="error_float32")
    if "reference" in outs:
        row["ours_vs_reference"] = errors(outs["ours"], outs["reference"])
        row["reference_dtype"] = "float64" if takes64 is True else "float32"
        row["note"] = "" if takes64 is True else FLA_NOTE
    else:
        row["ours_vs_reference"] = skipped.get("reference", "not measured")
    row["ours_vs_full"] = errors(outs["ours"], outs["full"])
    emit(row)
    if takes64 is True:
        row = dict(base, measure="error_float64", dtype="float64")
        a64 = copy.deepcopy(attn).double()
        q64, k64, v64 = q.double(), k.double(), v.double()
        ref64, _ = make_reference(name, a64)
        with torch.no_grad():
            o64 = a64(q64, k64, v64, causal=True)
            try:
                r64, _ = timed_first(lambda: ref64(q64, k64, v64), args.max_ref_seconds)
                row["ours_vs_reference"] = errors(o64, r64)
            except TooSlow:
                row["ours_vs_reference"] = f"skipped: too slow (one forward > {args.max_ref_seconds:g} s)"
            row["ours_vs_full"] = errors(o64, full(q64, k64, v64, causal=True))
        emit(row)


def parse_lengths(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1024 if part.endswith("k") else 1
        try:
            n = int(part[:-1] if mult > 1 else part) * mult
        except ValueError:
            raise Fail(
                f"--lengths takes positive integers separated by commas (e.g. 1024,4096 or 1k,4k), not {text!r}"
            ) from None
        if n < 1:
            raise Fail(f"--lengths takes positive integers, got {n}")
        out.append(n)
    return out


def run(args) -> int:
    import torch

    if args.lengths is not None and not args.lengths.strip(" ,"):
        raise Fail("--lengths is empty: give comma-separated lengths (e.g. 1024,4096)")
    if args.variants is not None and not args.variants.strip(" ,"):
        raise Fail(f"--variants is empty: give comma-separated cases of {', '.join(CASE_NAMES)}")
    lengths = parse_lengths(args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS))
    names = CASE_NAMES
    if args.variants:
        names = [x.strip() for x in args.variants.split(",") if x.strip()]
        bad = [x for x in names if x not in CASE_NAMES]
        if bad or not names:
            what = ", ".join(bad) if bad else repr(args.variants)
            raise Fail(f"unknown variant {what}; known: {', '.join(CASE_NAMES)}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.min_block is None:
        args.min_block = 0.01 if args.quick else 0.05
    if not args.min_block > 0:
        raise Fail(f"--min-block must be positive seconds, not {args.min_block}")
    if args.repeats < 1:
        raise Fail(f"--repeats must be at least 1, not {args.repeats}")
    if not args.max_ref_seconds > 0:
        raise Fail(f"--max-ref-seconds must be positive, not {args.max_ref_seconds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fh = args.out.open("a" if args.append else "w")
    except OSError as e:
        raise Fail(f"cannot write {args.out}: {e.strerror or e}") from None
    env = _env()
    t_all = time.perf_counter()
    with fh:

        def emit(row):
            fh.write(json.dumps(row) + "\n")
            fh.flush()

        for n in lengths:
            for case in CASES:
                if case[0] not in names:
                    continue
                t0 = time.perf_counter()
                measure_case(case, n, args.quick, args, env, emit)
                print(f"references: {case[0]} n={n}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print(f"references: {time.perf_counter() - t_all:.1f} s in all; rows in {args.out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- the table
def load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise Fail(f"{path} is not a file of references rows (write one with: references.py run --out {path})")
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and r.get("measure") in MEASURES and "case" in r:
            rows.append(r)
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


RATIOS = ("ours_over_reference", "ours_over_full", "reference_over_full")


def table(path: Path) -> str:
    rows = load_rows(path)
    latest = {(r["case"], r["n"], r["measure"]): r for r in rows}
    order = {c: i for i, c in enumerate(CASE_NAMES)}
    keys = sorted({(r["case"], r["n"]) for r in rows}, key=lambda x: (order.get(x[0], 99), x[1]))
    env = rows[-1].get("env", {})
    out = [
        f"torch {env.get('torch')}, {env.get('threads')} threads, {env.get('cpu')}; batch {rows[0]['batch']}, "
        f"{rows[0]['heads']} heads, head_dim {rows[0]['head_dim']}, float32, causal. Times: median per call.",
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure every case at every length; JSON lines to --out")
    r.add_argument("--out", type=Path, default=Path("results/references-cpu.jsonl"))
    r.add_argument("--lengths", help=f"comma list of n (default {LENGTHS}; --quick: {QUICK_LENGTHS})")
    r.add_argument("--quick", action="store_true", help=f"n = {QUICK_LENGTHS}, small options: checks the script")
    r.add_argument("--variants", help=f"comma list of cases (default all: {','.join(CASE_NAMES)})")
    r.add_argument("--repeats", type=int, help="interleaved rounds (median over them; default 7, --quick 3)")
    r.add_argument("--min-block", type=float, help="seconds of calls per timed block (default 0.05, --quick 0.01)")
    r.add_argument("--max-ref-seconds", type=float, default=60.0,
                   help="a reference call slower than this is skipped: too slow (default 60)")  # fmt: skip
    r.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    t = sub.add_parser("table", help="print the markdown tables of a rows file")
    t.add_argument("file", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "run":
            return run(a)
        print(table(a.file))
        return 0
    except Fail as e:
        print(f"references: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
