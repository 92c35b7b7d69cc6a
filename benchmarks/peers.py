"""Time effattn's plugins side by side with what users pick today, in one process, same shapes.

    python benchmarks/peers.py [--seq-lens 2048,4096,8192] [--out results/peers-cpu]

Peers (install with `pip install -e '.[peers]'`):
  * HF transformers `LongformerSelfAttention` (attention_window = 2 * window; includes q/k/v
    projections, so ours is timed with the very same nn.Linear projections in front);
  * HF transformers `BigBirdBlockSparseAttention` (block 64, 3 random blocks; includes projections);
  * `LocalAttention` from local-attention (window 256, one block back and forward; attention level);
  * `FastAttention` from performer-pytorch (256 features; attention level);
  * SDPA dense (`full`) and SDPA over the dense band mask (`sliding_window` backend=dense).

It also checks semantics: with HF's projections reused, effattn `sliding_window(window=w)` must
equal HF `LongformerSelfAttention(attention_window=2w)` (no global tokens).

Writes <out>.jsonl (one row per comparison, raw figures) and <out>.md (the table).
fp32, CPU, batch 1, 8 heads, head_dim 64, forward.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

import effattn
from effattn.bench.measure import matmul_peak_gflops, peak_memory_bytes, time_callable
from effattn.env import environment

H, D = 8, 64
E = H * D


class Projected(nn.Module):
    """Our attention core behind given q/k/v projections: the level HF's modules expose."""

    def __init__(self, core, q_proj, k_proj, v_proj):
        super().__init__()
        self.core, self.q_proj, self.k_proj, self.v_proj = core, q_proj, k_proj, v_proj

    def forward(self, x):  # (B, n, E) -> (B, n, E)
        B, n, _ = x.shape
        split = lambda t: t.view(B, n, H, D).transpose(1, 2)
        out = self.core(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return out.transpose(1, 2).reshape(B, n, E)


def hf_longformer(window: int):
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    cfg = LongformerConfig(
        hidden_size=E, num_attention_heads=H, attention_window=[2 * window], attention_probs_dropout_prob=0.0
    )
    m = LongformerSelfAttention(cfg, layer_id=0).eval()

    def run(x):
        B, n, _ = x.shape
        mask = torch.zeros(B, n)
        none = torch.zeros(B, n, dtype=torch.bool)
        return m(x, attention_mask=mask, is_index_masked=none, is_index_global_attn=none, is_global_attn=False)[0]

    return m, run


def hf_bigbird(block: int, r: int):
    from transformers import BigBirdConfig
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel

    cfg = BigBirdConfig(
        hidden_size=E,
        num_attention_heads=H,
        block_size=block,
        num_random_blocks=r,
        attention_type="block_sparse",
        use_bias=True,
    )
    m = BigBirdBlockSparseAttention(cfg, seed=0).eval()
    masks = {}

    def run(x):
        B, n, _ = x.shape
        if n not in masks:
            blocked, band, from_m, to_m = BigBirdModel.create_masks_for_block_sparse_attn(torch.ones(B, n), block)
            masks[n] = (band, from_m, to_m, blocked)
        band, from_m, to_m, blocked = masks[n]
        return m(x, band_mask=band, from_mask=from_m, to_mask=to_m, from_blocked_mask=blocked, to_blocked_mask=blocked)[
            0
        ]

    return m, run


def measure(fn, min_run_time):
    with torch.no_grad():
        t = time_callable(fn, min_run_time)
        mem = peak_memory_bytes(fn, "cpu")
    return t["time_ms"], t["time_iqr_ms"], mem


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-lens", default="2048,4096,8192")
    ap.add_argument("--out", default="results/peers-cpu")
    ap.add_argument("--min-run-time", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args(argv)
    try:
        lens = [int(x) for x in args.seq_lens.split(",")]
    except ValueError:
        sys.exit(f"peers.py: error: --seq-lens must be integers, got {args.seq_lens!r}")
    missing = [m for m in ("transformers", "local_attention", "performer_pytorch") if not _importable(m)]
    if missing:
        sys.exit(f"peers.py: error: missing {', '.join(missing)}; pip install -e '.[peers]'")
    from local_attention import LocalAttention
    from performer_pytorch import FastAttention

    torch.manual_seed(0)
    w = args.window
    lf_mod, lf_run = hf_longformer(w)
    bb_mod, bb_run = hf_bigbird(64, 3)
    ours_sw = Projected(effattn.create_attention("sliding_window", window=w), lf_mod.query, lf_mod.key, lf_mod.value)
    ours_bb = Projected(
        effattn.create_attention("bigbird", block_size=64, num_random_blocks=3), bb_mod.query, bb_mod.key, bb_mod.value
    )
    local = LocalAttention(window_size=w, causal=False, look_backward=1, look_forward=1, dim=D).eval()
    perf = FastAttention(dim_heads=D, nb_features=256).eval()
    sw_core = effattn.create_attention("sliding_window", window=w)
    sw_dense = effattn.create_attention("sliding_window", window=w, backend="dense")
    full = effattn.create_attention("full")
    ours_perf = effattn.create_attention("performer", num_features=256)

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows, env, peak = [], environment(), matmul_peak_gflops("cpu")
    with open(args.out + ".jsonl", "w") as f:
        for n in lens:
            g = torch.Generator().manual_seed(n)
            x = torch.randn(1, n, E, generator=g)
            q, k, v = (torch.randn(1, H, n, D, generator=g) for _ in range(3))
            with torch.no_grad():  # semantics: ours == HF Longformer with the same projections
                sem = float((ours_sw(x) - lf_run(x)).abs().max() / lf_run(x).abs().max())
            pairs = [
                (
                    f"HF Longformer (window ±{w}, incl. projections)",
                    lambda: lf_run(x),
                    f"sliding_window({w}) + same projections",
                    lambda: ours_sw(x),
                ),
                (
                    "HF BigBird (block 64, r=3, incl. projections)",
                    lambda: bb_run(x),
                    "bigbird(64, 3) + same projections",
                    lambda: ours_bb(x),
                ),
                (
                    f"local-attention LocalAttention (window {w}, ±1 block)",
                    lambda: local(q, k, v),
                    f"sliding_window({w})",
                    lambda: sw_core(q, k, v),
                ),
                (
                    "performer-pytorch FastAttention (256 features)",
                    lambda: perf(q, k, v),
                    "performer(256)",
                    lambda: ours_perf(q, k, v),
                ),
                ("SDPA dense (full)", lambda: full(q, k, v), f"sliding_window({w})", lambda: sw_core(q, k, v)),
                (
                    "SDPA with dense band mask",
                    lambda: sw_dense(q, k, v),
                    f"sliding_window({w})",
                    lambda: sw_core(q, k, v),
                ),
            ]
            for peer_name, peer_fn, ours_name, ours_fn in pairs:
                pt, piqr, pm = measure(peer_fn, args.min_run_time)
                ot, oiqr, om = measure(ours_fn, args.min_run_time)
                row = {
                    "seq_len": n,
                    "peer": peer_name,
                    "ours": ours_name,
                    "peer_time_ms": pt,
                    "peer_iqr_ms": piqr,
                    "ours_time_ms": ot,
                    "ours_iqr_ms": oiqr,
                    "speedup": pt / ot,
                    "peer_peak_mem_bytes": pm,
                    "ours_peak_mem_bytes": om,
                    "longformer_semantics_max_rel_diff": sem,
                    "matmul_peak_gflops": peak,
                    "env": env,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                if ours_name.startswith("sliding_window") and "projections" not in ours_name:
                    nnz = sw_core.nnz(n, n)
                    row["ours_useful_gflops"] = 4 * H * D * nnz / (ot / 1e3) / 1e9
                    row["ours_peak_fraction"] = row["ours_useful_gflops"] / peak
                if ours_name.startswith("bigbird"):
                    nnz = ours_bb.core.nnz(n, n)
                    row["ours_attention_useful_gflops_incl_proj_time"] = 4 * H * D * nnz / (ot / 1e3) / 1e9
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(
                    f"n={n:6d}  {peer_name:55s} {pt:9.1f} ms   {ours_name:40s} {ot:8.1f} ms   x{pt / ot:5.2f}",
                    flush=True,
                )
    _write_md(rows, args.out + ".md", peak)
    print(f"\nwrote {args.out}.jsonl and {args.out}.md")


def _write_md(rows, path, peak):
    lines = [
        f"# effattn against its peers (CPU, fp32, forward, batch 1, {H} heads, head_dim {D})",
        "",
        f"Matmul peak measured in this run: {peak:.0f} GFLOP/s. Times are medians from one process.",
        "",
        "| n | peer | peer ms | ours | ours ms | speed-up | peer peak MiB | ours peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['seq_len']} | {r['peer']} | {r['peer_time_ms']:.1f} | {r['ours']} | {r['ours_time_ms']:.1f} "
            f"| {r['speedup']:.2f}x | {r['peer_peak_mem_bytes'] / 2**20:.0f} | {r['ours_peak_mem_bytes'] / 2**20:.0f} |"
        )
    sem = max(r["longformer_semantics_max_rel_diff"] for r in rows)
    lines += [
        "",
        f"Semantics: effattn sliding_window(w) vs HF Longformer(attention_window=2w), same projections: "
        f"max relative difference {sem:.1e}.",
        "",
    ]
    sw = [r for r in rows if "ours_peak_fraction" in r and r["peer"].startswith("SDPA dense")]
    if sw:
        lines.append(
            "sliding_window useful throughput: "
            + ", ".join(
                f"n={r['seq_len']}: {r['ours_useful_gflops']:.0f} GFLOP/s "
                f"({100 * r['ours_peak_fraction']:.0f}% of peak)"
                for r in sw
            )
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _importable(mod):
    try:
        __import__(mod)
        return True
    except Exception:  # noqa: BLE001 - a peer that fails to import in any way is left out of the table
        return False


if __name__ == "__main__":
    main()
