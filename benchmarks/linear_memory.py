"""Causal linear attention: peak memory of effattn's chunked form against the cumulative-sum form
that keeps a d x d state for every position (the form issue #3 rules out).

    python benchmarks/linear_memory.py [--seq-len 16384] [--out results/linear-memory/linear-memory-cpu.json]

Both compute out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps) with S_i = sum_{j<=i} phi(k_j) v_j^T.
Peak memory is measured with effattn's profiler-based CPU measurement (forward, no autograd).
"""

import argparse
import json

import torch
import torch.nn.functional as F

import effattn
from effattn.bench.measure import output_errors, peak_memory_bytes


def cumsum_form(q, k, v, eps=1e-6):
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # (B, H, n, d, d): a state per position
    z = torch.cumsum(fk, dim=2)
    num = (fq.unsqueeze(-2) @ S).squeeze(-2)
    return num / ((fq * z).sum(-1, keepdim=True) + eps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--out", default="results/linear-memory/linear-memory-cpu.json")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, a.heads, a.seq_len, a.head_dim, generator=g) for _ in range(3))
    lin = effattn.create_attention("linear")
    with torch.no_grad():
        ours = peak_memory_bytes(lambda: lin(q, k, v, causal=True), "cpu")
        theirs = peak_memory_bytes(lambda: cumsum_form(q, k, v), "cpu")
        err, _ = output_errors(lin(q, k, v, causal=True), cumsum_form(q, k, v))
    row = {
        "seq_len": a.seq_len,
        "heads": a.heads,
        "head_dim": a.head_dim,
        "chunked_peak_mem_bytes": ours,
        "cumsum_peak_mem_bytes": theirs,
        "ratio": ours / theirs,
        "rel_diff_outputs": err,
    }
    print(json.dumps(row, indent=1))
    with open(a.out, "w") as f:
        json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
