"""Do Reformer LSH, routing or Sinkhorn attention earn a place among effattn's plugins? (issue #15)

    python benchmarks/candidates.py run --out-dir results/candidates          # the full measurement
    python benchmarks/candidates.py run --out-dir /tmp/cand --quick           # a smoke test (~2 min)
    python benchmarks/candidates.py run --out-dir results/candidates --only sweep-fwd
    python benchmarks/candidates.py table results/candidates

`run` measures, in this process, through effattn's Python API (`effattn.bench.run_sweep` with
`isolation="none"`, and `run_task_sweep`, which is what `effattn bench --task` runs):

- `sweep-fwd.jsonl`: forward at n = 1k, 2k, 4k, 8k (fp32, batch 1, 8 heads, head_dim 64, effattn
  bench's defaults otherwise): time, peak memory, relative error against `full` on the same q, k, v,
  peak_fraction, for `full`, `sliding_window`, `linear`, `performer` and the three candidates;
- `sweep-fwdbwd.jsonl`: the same variants, forward + backward at n = 4k;
- `sweep-trained.jsonl`: forward at n = 1k and 4k on q, k, v from a backbone trained on MQAR
  (`--inputs trained`: peaked attention, where approximations err differently than on Gaussian
  noise); the error column is the figure here, since the tasks below cannot train the candidates;
- `task-retrieval.jsonl`: `retrieval_distance:distance=40` at seq 64, 1 layer, 800 steps (the budget
  of results/retrieval-distance.jsonl);
- `task-mqar.jsonl`: `mqar:num_pairs=16:vocab=256` at seq 128, 2 layers, `--conv-kernel 4`, 2000 steps
  (the budget of results/mqar-capacity-current.jsonl).

Both tasks train effattn's causal decoder. A candidate whose library has no causal form that passes
effattn's `causal_no_future_leak` check is not offered in causal mode (see below), and its task rows
are recorded as `unsupported` with that reason instead of being trained. `table DIR` prints time
ratios against `full` and `sliding_window` per length, the relative error, and the task accuracy next
to full/window references read from results/ (the same budgets).

Nothing else may run meanwhile: every variant of a length is timed in interleaved rounds in this
process, as `effattn bench` does in its measuring process. Because the sweep runs in-process, the
plugins are registered at run time with `effattn.registry.register_attention` (no package, no entry
point); there is no per-call timeout (`isolation="none"`).

The candidates, each a wrapper of the library's attention core (its own projections, positional
embeddings, local-attention heads, aux losses and reversible layers left out), fed effattn's
(B, H, n, D) q, k, v with B·H merged into the library's batch:

- `reformer_lsh` (reformer_pytorch `LSHAttention`): Reformer shares queries and keys: one tensor
  `qk` is hashed, used as the query, and its L2-normalised copy as the key; a query attends itself
  only when nothing else is in its chunk. This is a property of the method. The plugin feeds the
  shared `qk` = k (option `qk=q` uses q instead); the other of q, k is not used at all. v is v.
  The length must be a multiple of 2·bucket_size: the plugin pads with zeros and masks the padding
  (`input_mask`). The random rotations are drawn from torch's global generator at every call; the
  plugin draws them inside `torch.random.fork_rng`, seeded from `seed`, so every call (and every
  plugin with the same seed) hashes alike and the caller's generator is left as it was.
- `routing` (routing_transformer `KmeansAttention`): queries and keys are routed to `num_clusters` =
  round(n / window_size) k-means centroids (normalised, per head), each centroid takes its top
  ceil(n / num_clusters) queries and keys, attention runs inside each cluster, and a query's outputs
  are averaged over the clusters that took it; a query no cluster took outputs **zeros** (a property
  of the method's balanced top-k routing). The centroids are initialised (10 k-means iterations,
  a `randperm` under a seeded `fork_rng`) from the first input seen at each (heads, head_dim,
  clusters), and in training they move by the library's EMA after each call (what its
  `update_kmeans_on_backwards` hook does). The commitment loss is discarded (effattn's backbone has
  no auxiliary-loss channel). So outputs depend on what the module saw before: a stateful core.
- `sinkhorn` (sinkhorn_transformer `SinkhornAttention`): queries in blocks of bucket_size attend
  their own block and the block the sort net picks (bucket means, top-1 "differentiable top-k";
  with `non_permutative=False` the gumbel-Sinkhorn permutation instead, drawn under a seeded
  `fork_rng`). The length must be a multiple of bucket_size: the plugin pads with zeros and masks.
  Library quirk, kept as it is: for the picked block it uses that block's *keys* as values
  (`b_v_r = b_k_r.reshape(...)` in 0.11.4).

None declares padding or cross-attention; causal: see `CAUSAL` below (its evidence).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

import effattn
from effattn.options import check_choice, check_int

# ------------------------------------------------------------------------------------- plugins
PKG = {"reformer_lsh": "reformer_pytorch", "routing": "routing_transformer", "sinkhorn": "sinkhorn_transformer"}
PIP = {
    "reformer_lsh": "reformer_pytorch axial-positional-embedding product-key-memory",
    "routing": "routing_transformer product-key-memory mixture-of-experts",
    "sinkhorn": "sinkhorn_transformer axial-positional-embedding product-key-memory",
}


def _why_not(name: str) -> str | None:
    try:
        __import__(PKG[name])
    except Exception as e:  # noqa: BLE001 - any import failure (a missing dep too) is the reason
        return f"unavailable: pip install --no-deps {PIP[name]} ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)
    return ctx


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if x.shape[-2] == n else torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[-2]))


class _Candidate(nn.Module):
    exact = False
    supports_causal = False
    supports_padding = False
    supports_cross = False
    dtypes = ("float32", "float64")
    _name = ""

    @classmethod
    def availability(cls, device="cpu"):
        return _why_not(cls._name)

    def _check(self, q, k, v, causal, key_padding_mask, same_v_dim: bool = False):
        """The call's checks; returns the empty output for n = 0, else None."""
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        if causal and not self.supports_causal:
            raise effattn.UnsupportedError(f"{self._name} is not offered in causal mode")
        if key_padding_mask is not None:
            raise effattn.UnsupportedError(f"{self._name} does not support key_padding_mask")
        if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            raise effattn.UnsupportedError(f"{self._name} needs self-attention q, k, v of one shape (B, H, n, D)")
        if q.shape[2] == 0:
            return q.new_zeros(*q.shape[:3], v.shape[-1])
        if same_v_dim and v.shape[-1] != q.shape[-1]:
            raise effattn.UnsupportedError(f"{self._name} needs the value dimension equal to head_dim")
        return None


class ReformerLSH(_Candidate):
    """Reformer LSH attention (reformer_pytorch LSHAttention): shared-QK, hashed into buckets, chunked."""

    complexity = "O(n·h·b)"
    wraps = ("reformer_pytorch",)
    _name = "reformer_lsh"

    def __init__(self, bucket_size: int = 64, n_hashes: int = 8, qk: str = "k", seed: int = 0):
        super().__init__()
        self.bucket_size = check_int("bucket_size", bucket_size, 1)
        self.n_hashes = check_int("n_hashes", n_hashes, 1)
        self.qk = check_choice("qk", qk, ("q", "k"))
        self.seed = check_int("seed", seed, 0)
        from reformer_pytorch import LSHAttention

        self._lib = [LSHAttention(bucket_size=self.bucket_size, n_hashes=self.n_hashes, causal=False).eval()]

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if (empty := self._check(q, k, v, causal, key_padding_mask)) is not None:
            return empty
        b, h, n, d = q.shape
        m = math.ceil(n / (2 * self.bucket_size)) * 2 * self.bucket_size
        # q (or k) is unused by the shared-QK method: its gradient is exactly zero, given as such (effattn
        # requires a gradient to reach q, k and v under fwdbwd; the n·d multiply costs nothing next to LSH)
        shared = k + 0 * q if self.qk == "k" else q + 0 * k
        shared = shared.reshape(b * h, n, d)
        vv = v.reshape(b * h, n, v.shape[-1])
        real = torch.zeros(b * h, m, dtype=torch.bool, device=q.device)
        real[:, :n] = True
        with _seeded(self.seed, q.device):
            torch.manual_seed(self.seed)
            out, _, _ = self._lib[0](_pad_to(shared, m), _pad_to(vv, m), input_mask=real if m != n else None)
        return out[:, :n].reshape(b, h, n, -1).to(q.dtype)


class Routing(_Candidate):
    """Routing attention (routing_transformer KmeansAttention): online k-means clusters, attention inside each."""

    complexity = "O(n·w)"
    wraps = ("routing_transformer",)
    _name = "routing"

    def __init__(self, window_size: int = 64, seed: int = 0):
        super().__init__()
        self.window_size = check_int("window_size", window_size, 1)
        self.seed = check_int("seed", seed, 0)
        self._libs: dict = {}  # (heads, head_dim, clusters, device) -> KmeansAttention; state, not parameters

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if (empty := self._check(q, k, v, causal, key_padding_mask, same_v_dim=True)) is not None:
            return empty
        b, h, n, d = q.shape
        nc = max(1, round(n / self.window_size))
        wsz = math.ceil(n / nc)
        key = (h, d, nc, str(q.device), q.dtype)
        from routing_transformer import KmeansAttention

        with _seeded(self.seed, q.device):
            torch.manual_seed(self.seed)
            lib = self._libs.get(key)
            if lib is None:
                lib = KmeansAttention(nc, wsz, h, d, causal=False).to(device=q.device, dtype=q.dtype)
                self._libs[key] = lib
            lib.window_size = wsz
            lib.train(self.training)
            out, _aux = lib(q, k, v)
            if self.training and lib.kmeans.new_means is not None:
                lib.kmeans.update()
        return out.to(q.dtype)


class Sinkhorn(_Candidate):
    """Sinkhorn attention (sinkhorn_transformer SinkhornAttention): own block plus one block picked by a sort net."""

    complexity = "O(n·b)"
    wraps = ("sinkhorn_transformer",)
    _name = "sinkhorn"

    def __init__(self, bucket_size: int = 64, non_permutative: bool = True, seed: int = 0):
        super().__init__()
        self.bucket_size = check_int("bucket_size", bucket_size, 1)
        if not isinstance(non_permutative, bool):
            raise ValueError(f"option non_permutative must be true or false, got {non_permutative!r}")
        self.non_permutative = non_permutative
        self.seed = check_int("seed", seed, 0)
        self._libs: dict = {}  # (heads, head_dim) -> SinkhornAttention (no parameters with its default sort net)

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if (empty := self._check(q, k, v, causal, key_padding_mask, same_v_dim=True)) is not None:
            return empty
        b, h, n, d = q.shape
        m = math.ceil(n / self.bucket_size) * self.bucket_size
        from sinkhorn_transformer.sinkhorn_transformer import SinkhornAttention

        lib = self._libs.get((h, d))
        if lib is None:
            lib = SinkhornAttention(
                self.bucket_size, d * h, d, h, max_seq_len=m, non_permutative=self.non_permutative
            ).eval()
            self._libs[(h, d)] = lib
        mask = None
        if m != n:
            mask = torch.zeros(b, m, dtype=torch.bool, device=q.device)
            mask[:, :n] = True
        with _seeded(self.seed, q.device):
            torch.manual_seed(self.seed)
            out = lib(_pad_to(q, m), _pad_to(k, m), _pad_to(v, m), q_mask=mask, kv_mask=mask)
        return out[:, :, :n].to(q.dtype)


PLUGINS = {"reformer_lsh": ReformerLSH, "routing": Routing, "sinkhorn": Sinkhorn}
#: why none is offered in causal mode. Measured on the raw libraries (n = 64, d = 16): changing only the
#: last token's q/k moved earlier outputs by up to 0.57 (LSHAttention(causal=True), bucket 8, 2 hashes) and
#: 0.96 (KmeansAttention(causal=True), 4 clusters of 16) in absolute value; tests/test_candidates_script.py
#: repeats the probe.
CAUSAL = {
    "reformer_lsh": "LSHAttention(causal=True) masks j > i inside the chunks, but which keys share a query's "
    "chunk depends on later tokens' hashes (sorting by bucket): later tokens move earlier outputs",
    "routing": "KmeansAttention(causal=True): each cluster takes its top-w tokens over the whole sequence "
    "and the centroids are fitted to it, so later tokens decide which earlier keys a query sees",
    "sinkhorn": "SinkhornAttention has no causal form (SinkhornCausalAttention is another module, not wrapped)",
}


def register() -> None:
    """Register the three candidates under their names (once per process)."""
    from effattn.registry import _REGISTRY, register_attention

    for name, cls in PLUGINS.items():
        if _REGISTRY.get(name) is None:
            register_attention(name, source="benchmarks/candidates.py")(cls)


# ----------------------------------------------------------------------------------- the runs
CANDIDATES = ["reformer_lsh", "routing", "sinkhorn"]
BASELINES = ["full", "sliding_window", "linear", "performer"]
FULL = {"fwd": [1024, 2048, 4096, 8192], "fwdbwd": [4096], "trained": [1024, 4096]}
QUICK = {"fwd": [256, 512], "fwdbwd": [256], "trained": [256]}
#: task variants at seq 64/128: small buckets (each candidate sees a handful of blocks, as window 8/16 does)
TASKS = {
    "retrieval": dict(
        task="retrieval_distance:distance=40",
        seq=64,
        steps=800,
        layers=1,
        conv_kernel=0,
        attn=["reformer_lsh:bucket_size=8", "routing:window_size=16", "sinkhorn:bucket_size=8"],
        ref=[("results/retrieval-distance.jsonl", ["full", "sliding_window:window=8"])],
    ),
    "mqar": dict(
        task="mqar:num_pairs=16:vocab=256",
        seq=128,
        steps=2000,
        layers=2,
        conv_kernel=4,
        attn=["reformer_lsh:bucket_size=8", "routing:window_size=16", "sinkhorn:bucket_size=16"],
        ref=[
            ("results/mqar-capacity.jsonl", ["full", "linear"]),
            ("results/mqar-capacity-current.jsonl", ["sliding_window_sinks:window=16"]),
        ],
    ),
}
PARTS = ["sweep-fwd", "sweep-fwdbwd", "sweep-trained", "task-retrieval", "task-mqar"]


def _sweep(part: str, out: Path, quick: bool, min_run_time: float | None) -> None:
    from effattn.bench import SweepSpec, run_sweep
    from effattn.spec import parse_variants

    kind = part.split("-")[1]
    lens = (QUICK if quick else FULL)[kind]
    kw = {"min_run_time_s": min_run_time} if min_run_time else {}
    if kind == "trained":  # the error on peaked attention: q, k, v of a backbone trained on MQAR
        kw["inputs"] = "trained"
    mode = "fwdbwd" if kind == "fwdbwd" else "fwd"
    spec = SweepSpec(seq_lens=lens, variants=parse_variants(",".join(BASELINES + CANDIDATES)), mode=mode, **kw)
    print(f"$ sweep {mode} n={lens} -> {out}", flush=True)
    run_sweep(spec, str(out), resume=out.exists(), isolation="none")


def _task(part: str, out: Path, quick: bool) -> None:
    from effattn.bench.tasksweep import run_task_sweep, task_base_row
    from effattn.registry import get_entry
    from effattn.spec import parse_variant
    from effattn.store import ResultsFile
    from effattn.tasks import create_task
    from effattn.tasks.train import TrainSpec

    t = TASKS[part.split("-")[1]]
    tv = parse_variant(t["task"], validate=False)
    task = create_task(tv.name, **tv.options)
    spec = TrainSpec(steps=20 if quick else t["steps"], n_layers=t["layers"], conv_kernel=t["conv_kernel"], n_heads=4)
    variants = [parse_variant(a) for a in t["attn"]]
    ok = [v for v in variants if get_entry(v.name).facts.supports_causal]
    print(f"$ task {t['task']} n={t['seq']} steps={spec.steps} -> {out}", flush=True)
    if ok:
        run_task_sweep(task, ok, [t["seq"]], 1, spec, str(out), resume=out.exists(), log=print)
    skipped = [v for v in variants if v not in ok]
    if skipped:  # the task trains a causal decoder: recorded, not trained
        rf = ResultsFile(str(out), "resume" if out.exists() else "new").open()
        try:
            for v in skipped:
                row = task_base_row(task, v, t["seq"], 0, spec)
                reason = f"not offered in causal mode: {CAUSAL[v.name]}"
                rf.append({**row, "status": "unsupported", "reason": reason})
                print(f"    {v.label}: unsupported ({reason})")
        finally:
            rf.close()


def run(args) -> int:
    register()
    missing = {n: _why_not(n) for n in CANDIDATES if _why_not(n)}
    for n, why in missing.items():
        print(f"candidates: {n} {why}", file=sys.stderr)
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"candidates: --out-dir {out_dir} is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    for part in args.only or PARTS:
        out = out_dir / f"{part}.jsonl"
        if part.startswith("sweep"):
            _sweep(part, out, args.quick, args.min_run_time)
        else:
            _task(part, out, args.quick)
    return 0


# ----------------------------------------------------------------------------------- the table
def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "label" in r:
            out.append(r)
    return out


def table(args) -> int:
    d = Path(args.dir)
    if not d.is_dir():
        raise SystemExit(f"candidates: {d} is not a directory")
    if not any((d / f"{p}.jsonl").exists() for p in PARTS):
        raise SystemExit(f"candidates: {d} holds none of {', '.join(p + '.jsonl' for p in PARTS)}")
    if not any(_rows(d / f"{p}.jsonl") for p in PARTS):
        raise SystemExit(f"candidates: {d} holds no results rows (torn or foreign files?)")
    for part in ("sweep-fwd", "sweep-fwdbwd", "sweep-trained"):
        rows = {(r["label"], r["seq_len"]): r for r in _rows(d / f"{part}.jsonl")}  # the latest row per point
        if not rows:
            continue
        print(f"\n{part}")
        print("| variant | n | time ms | x full | x sliding_window | rel err vs full | peak MiB | peak fraction |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in sorted({n for _, n in rows}):
            f, w = rows.get(("full", n)), rows.get(("sliding_window", n))
            for lab in dict.fromkeys(lab for lab, m in rows if m == n):
                r = rows[(lab, n)]
                if r.get("status") != "ok":
                    print(f"| {lab} | {n} | {r.get('status', '?')}: {r.get('reason') or ''} | | | | | |")
                    continue
                rat = lambda ref, r=r: (
                    f"{r['time_ms'] / ref['time_ms']:.2f}" if ref and ref.get("status") == "ok" else "-"
                )
                num = lambda x, fmt: "-" if x is None else format(x, fmt)
                mem = r.get("peak_mem_bytes")
                mib = "-" if mem is None else f"{mem / 2**20:.0f}"
                print(
                    f"| {lab} | {n} | {r['time_ms']:.1f} | {rat(f)} | {rat(w)} | "
                    f"{num(r.get('rel_err_vs_full'), '.3f')} | {mib} | {num(r.get('peak_fraction'), '.0%')} |"
                )
    for name, t in TASKS.items():
        rows = _rows(d / f"task-{name}.jsonl")
        if not rows:
            continue
        refs = [
            {**r, "_src": path}
            for path, labels in t["ref"]
            for r in _rows(Path(path))
            if r.get("label") in labels and r.get("status") == "ok"
        ]
        print(f"\n{t['task']} at n={t['seq']}: test accuracy")
        for r in [*refs, *rows]:
            acc = r.get("test_accuracy")
            steps = (r.get("train_spec") or {}).get("steps")
            what = f"{acc:.3f}" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('reason')}"
            src = f"  ({r['_src']}, seed {r.get('seed')})" if "_src" in r else ""
            print(f"  {r['label']:<40} {what}  [{steps} steps]{src}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print its usage first)
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None) -> int:
    p = _Parser(prog="candidates.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="measure (nothing else may run meanwhile)")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--quick", action="store_true", help="tiny sizes: n=256,512 (fwdbwd 256), 20 training steps")
    r.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], help=f"comma list of {','.join(PARTS)}")
    r.add_argument("--min-run-time", type=float, default=None, help="seconds per point (effattn's default 0.2)")
    t = sub.add_parser("table", help="print the comparison of a run directory")
    t.add_argument("dir")
    args = p.parse_args(argv)
    if args.cmd == "run":
        bad = [x for x in (args.only or []) if x not in PARTS]
        if args.only is not None and (bad or not args.only):
            p.error(f"--only: unknown part {', '.join(bad) or '(empty)'}; choose from {', '.join(PARTS)}")
        if args.min_run_time is not None and not (math.isfinite(args.min_run_time) and args.min_run_time > 0):
            p.error(f"--min-run-time must be a finite number > 0, got {args.min_run_time}")
        return run(args)
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
