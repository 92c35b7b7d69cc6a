"""Exact sparse attention on plain PyTorch, without any n x n tensor.

Queries are cut into row chunks; each chunk attends a gathered list of keys (a superset of what
its rows attend) and the pattern masks the rest. Chunks whose row count, key count and mask
coincide are batched into ONE `scaled_dot_product_attention` call with ONE shared mask. Measured
here (n = 8192, window 256, fp32, 2 cores): a shared (c, K) mask over 4-D (B, H*G, c, K) inputs
runs at ~55 useful GFLOP/s, a separate mask per chunk at ~11 and 5-D inputs fall to the
math path at ~15. So plugins lay out each chunk's keys so that interior chunks get identical
masks, and only a few edge chunks form groups of their own.

Memory is O(sum over chunks of rows x keys): the pattern's non-zero pairs plus the chunk slack.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

PairMask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (i, j) broadcast -> bool


@dataclass
class Group:
    rows: torch.Tensor          # (G, c) query rows
    keys: torch.Tensor          # (G, K) key indices
    mask: torch.Tensor | None   # (c, K) shared bool mask, None when every pair attends
    row_keep: torch.Tensor | None  # (c, 1) zero for rows with no key at all


@dataclass
class Plan:
    groups: list[Group]
    order: torch.Tensor         # inverse permutation putting group outputs back in row order
    pairs: int                  # attended pairs (for FLOP counts)
    computed_pairs: int         # pairs actually computed, slack included


def build_plan(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], pair_mask: PairMask) -> Plan:
    """chunks: (rows, keys) index tensors; pair_mask(i, j) the pattern (causal already folded in)."""
    buckets: dict[tuple, list] = {}
    pairs = computed = 0
    for rows, keys in chunks:
        m = pair_mask(rows[:, None], keys[None, :])
        pairs += int(m.sum())
        computed += m.numel()
        sig = (rows.numel(), keys.numel(), m.numpy().tobytes())
        buckets.setdefault(sig, [m, [], []])
        buckets[sig][1].append(rows)
        buckets[sig][2].append(keys)
    groups, all_rows = [], []
    for m, rows, keys in buckets.values():
        has_key = m.any(-1, keepdim=True)
        row_keep = None
        if not bool(has_key.all()):  # attend key slot 0 instead, then zero the row: no NaN anywhere
            m = m.clone()
            m[~has_key[:, 0], 0] = True
            row_keep = has_key
        mask = None if bool(m.all()) else m
        groups.append(Group(torch.stack(rows), torch.stack(keys), mask, row_keep))
        all_rows.append(groups[-1].rows.reshape(-1))
    order = torch.argsort(torch.cat(all_rows))
    return Plan(groups, order, pairs, computed)


def run_plan(plan: Plan, q, k, v, key_padding_mask=None, scale=None):
    """q (B, H, n_q, D), k/v (B, H, n_k, D) -> (B, H, n_q, D)."""
    B, H, _, D = q.shape
    outs = []
    for g in plan.groups:
        G, c = g.rows.shape
        K = g.keys.shape[1]
        rows, keys = g.rows.to(q.device), g.keys.to(q.device)
        qg = q[:, :, rows.reshape(-1)].reshape(B, H * G, c, D)   # (B, H*G, c, D)
        kg = k[:, :, keys.reshape(-1)].reshape(B, H * G, K, D)   # (B, H*G, K, D)
        vg = v[:, :, keys.reshape(-1)].reshape(B, H * G, K, v.shape[-1])
        mask = None if g.mask is None else g.mask.to(q.device)
        row_keep = None if g.row_keep is None else g.row_keep.to(device=q.device, dtype=q.dtype)
        if key_padding_mask is not None:
            keep = ~key_padding_mask[:, keys]                        # (B, G, K)
            m = keep[:, None, :, None, :]                            # (B, 1, G, 1, K)
            m = m if mask is None else (m & mask)
            m = m.expand(B, H, G, c, K).reshape(B, H * G, c, K)
            has_key = m.any(-1, keepdim=True)
            first = torch.zeros(K, dtype=torch.bool, device=q.device)
            first[0] = True
            mask = m | (~has_key & first)
            rk = has_key.to(q.dtype)
            row_keep = rk if row_keep is None else rk * row_keep
        out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale)
        if row_keep is not None:
            out = out * row_keep
        outs.append(out.reshape(B, H, G * c, -1))
    return torch.cat(outs, dim=2).index_select(2, plan.order.to(q.device))


class PlanCache:
    """Plans depend only on (n_q, n_k, causal): build once per shape, reuse every call."""

    def __init__(self, build: Callable[[int, int, bool], Plan], size: int = 8):
        self.build, self.size, self.plans = build, size, {}

    def __call__(self, n_q: int, n_k: int, causal: bool) -> Plan:
        key = (n_q, n_k, causal)
        if key not in self.plans:
            if len(self.plans) >= self.size:
                self.plans.pop(next(iter(self.plans)))
            self.plans[key] = self.build(n_q, n_k, causal)
        return self.plans[key]


def arange(a: int, b: int) -> torch.Tensor:
    return torch.arange(a, b, dtype=torch.long)
