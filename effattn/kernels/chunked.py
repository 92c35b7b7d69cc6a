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

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PairMask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (i, j) broadcast -> bool


@dataclass
class Group:
    rows: torch.Tensor  # (G, c) query rows
    keys: torch.Tensor  # (G, K) key indices
    mask: torch.Tensor | None  # (c, K) shared bool mask, None when every pair attends
    row_keep: torch.Tensor | None  # (c, 1) zero for rows with no key at all
    # (first row, first key, key step) when chunk g holds rows [r0 + g c, r0 + (g+1) c) and keys
    # [k0 + g step, k0 + g step + K): then q, k, v are read through unfold views, with no copy
    sliding: tuple[int, int, int] | None = None
    row_start: int | None = None  # rows are [row_start, row_start + G c): read q as a view
    # (first, step) when chunk g holds rows first + g + step * t (t < c), step >= G: a lattice (the
    # residue classes i mod s) read through an as_strided view, with no copy; likewise for keys
    row_lattice: tuple[int, int] | None = None
    key_lattice: tuple[int, int] | None = None
    _float_masks: dict | None = None
    _workspace: dict | None = None

    def additive_mask(self, dtype, device, repeat: int = 1):
        """The shared mask as 0 / -inf in the input dtype (SDPA's fastest mask form), its rows
        repeated `repeat` times (grouped-query heads as more rows), cached."""
        if self.mask is None:
            return None
        key = (dtype, str(device), repeat)
        if self._float_masks is None:
            self._float_masks = {}
        if key not in self._float_masks:
            m = torch.zeros(self.mask.shape, dtype=dtype, device=device)
            m = m.masked_fill_(~self.mask.to(device), float("-inf"))
            self._float_masks[key] = m.repeat(repeat, 1) if repeat > 1 else m
        return self._float_masks[key]


def _sliding(rows: torch.Tensor, keys: torch.Tensor):
    G, c = rows.shape
    K = keys.shape[1]
    r0, k0 = int(rows[0, 0]), int(keys[0, 0])
    if not torch.equal(rows.reshape(-1), torch.arange(r0, r0 + G * c)):
        return None
    if not torch.equal(keys - keys[:, :1], torch.arange(K).expand(G, K)):
        return None  # a chunk's keys are not one contiguous run
    step = int(keys[1, 0] - keys[0, 0]) if G > 1 else c
    if step <= 0 or not torch.equal(keys[:, 0], k0 + step * torch.arange(G)):
        return None
    return r0, k0, step


def _lattice(idx: torch.Tensor):
    """(first, step) when idx[g, t] = first + g + step * t with step >= G (no overlap), else None."""
    G, c = idx.shape
    first = int(idx[0, 0])
    step = int(idx[0, 1] - idx[0, 0]) if c > 1 else G
    if step < G:
        return None
    want = first + torch.arange(G)[:, None] + step * torch.arange(c)[None, :]
    return (first, step) if torch.equal(idx, want) else None


def _lattice_view(x: torch.Tensor, first: int, step: int, G: int, c: int) -> torch.Tensor:
    """x (heads, n, D) -> the (G, heads, c, D) view of rows first + g + step * t, without a copy."""
    sh, sn, sd = x.stride()
    return x.as_strided((G, x.shape[0], c, x.shape[2]), (sn, sh, step * sn, sd), x.storage_offset() + first * sn)


@dataclass
class Plan:
    groups: list[Group]
    order: torch.Tensor | None  # permutation putting group outputs back in row order (None: already)
    pairs: int  # attended pairs (for FLOP counts)
    computed_pairs: int  # pairs actually computed, slack included
    _scratch: tuple | None = None  # the merge module's output buffers for this piece, reused


def build_plan(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], pair_mask: PairMask) -> Plan:
    """chunks: (rows, keys) index tensors; pair_mask(i, j) the pattern (causal already folded in)."""
    buckets: dict[tuple, list] = {}
    pairs = computed = 0
    for rows, keys in chunks:
        m = pair_mask(rows[:, None], keys[None, :]).expand(rows.numel(), keys.numel())  # (a mask of j alone)
        pairs += int(m.sum())
        computed += m.numel()
        sig = (rows.numel(), keys.numel(), m.numpy().tobytes())
        buckets.setdefault(sig, [m, [], []])
        buckets[sig][1].append(rows)
        buckets[sig][2].append(keys)
    groups = []
    for m, rows, keys in buckets.values():
        has_key = m.any(-1, keepdim=True)
        row_keep = None
        if not bool(has_key.all()):  # attend key slot 0 instead, then zero the row: no NaN anywhere
            m = m.clone()
            m[~has_key[:, 0], 0] = True
            row_keep = has_key
        mask = None if bool(m.all()) else m
        rows_t, keys_t = torch.stack(rows), torch.stack(keys)
        flat = rows_t.reshape(-1)
        r0 = int(flat[0]) if torch.equal(flat, torch.arange(int(flat[0]), int(flat[0]) + flat.numel())) else None
        g = Group(rows_t, keys_t, mask, row_keep, _sliding(rows_t, keys_t), r0)
        if r0 is None:
            g.row_lattice = _lattice(rows_t)
        if g.sliding is None:
            g.key_lattice = _lattice(keys_t)
        groups.append(g)
    groups.sort(key=lambda g: int(g.rows.min()))
    flat = torch.cat([g.rows.reshape(-1) for g in groups])
    order = None if torch.equal(flat, torch.arange(flat.numel())) else torch.argsort(flat)
    return Plan(groups, order, pairs, computed)


def _padding_mask(keys_pad, shared, G, c, K, device):
    """Shared pattern & one batch element's key padding (G, K; True = pad) -> the (G, 1, c, K)
    mask and the (G, 1, c, 1) rows that keep at least one key (others attend key 0, then zeroed)."""
    m = ~keys_pad[:, None, None, :]  # (G, 1, 1, K)
    m = m if shared is None else (m & shared.to(device))
    m = m.expand(G, 1, c, K)
    has_key = m.any(-1, keepdim=True)
    first = torch.zeros(K, dtype=torch.bool, device=device)
    first[0] = True
    return m | (~has_key & first), has_key


def _workspace(g: Group, name: str, like: torch.Tensor, shape) -> torch.Tensor:
    """A buffer kept on the group for inference: gathering into fresh memory costs page faults
    (measured: a 127 MB gather takes 106 ms fresh, 29 ms into a reused buffer)."""
    ws = g._workspace if g._workspace is not None else {}
    g._workspace = ws
    key = (name, like.dtype, str(like.device))
    buf = ws.get(key)
    if buf is None or tuple(buf.shape) != tuple(shape):
        buf = ws[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def element_inputs(g: Group, b: int, q, k, v, key_padding_mask, reuse: bool, bool_masks: bool = True):
    """Batch element b of group g laid out for one SDPA call: (qb, kb, vb, mask, keep).

    qb (G, Kh, Gq c, D): the chunk index as SDPA's batch dimension; with grouped-query heads
    (k, v with Kh < H heads) the H/Kh query heads of a kv head become more rows of one query block
    against their shared keys - only q is rearranged, k and v are read once. Sliding groups read k
    and v through unfold views (no copy); others gather them (into a reused workspace when
    `reuse`, i.e. no gradient is needed). mask: the group's shared additive (Gq c, K) mask, or with
    key padding a per-chunk (G, 1, Gq c, K) one (bool unless `bool_masks` is False: then
    additive); keep (…, Gq c, 1) zero for rows left with no key (they attend key slot 0 and are
    zeroed by the caller), or None."""
    H, D = q.shape[1], q.shape[3]
    Kh = k.shape[1]
    Gq = H // Kh
    G, c = g.rows.shape
    K = g.keys.shape[1]
    dev = q.device
    if g.row_start is not None:
        qb = q[b].narrow(1, g.row_start, G * c).unflatten(1, (G, c)).transpose(0, 1)  # (G, H, c, D)
    elif g.row_lattice is not None:
        qb = _lattice_view(q[b], *g.row_lattice, G, c)
    else:
        qb = q[b].index_select(1, g.rows.to(dev).reshape(-1)).unflatten(1, (G, c)).transpose(0, 1)
    if Gq > 1:
        qb = qb.reshape(G, Kh, Gq * c, D)
    if g.sliding:
        _, k0, step = g.sliding
        span = (G - 1) * step + K
        kb = k[b].narrow(1, k0, span).unfold(1, K, step).permute(1, 0, 3, 2)  # (G, Kh, K, D)
        vb = v[b].narrow(1, k0, span).unfold(1, K, step).permute(1, 0, 3, 2)
        pad = None if key_padding_mask is None else key_padding_mask[b].narrow(0, k0, span).unfold(0, K, step)
    elif g.key_lattice is not None:
        kb, vb = (_lattice_view(x[b], *g.key_lattice, G, K) for x in (k, v))
        pad = None if key_padding_mask is None else key_padding_mask[b][g.keys.to(dev)]  # (G, K)
    else:
        keys = g.keys.to(dev)
        flat = keys.reshape(-1)
        if reuse:
            kb = torch.index_select(k[b], 1, flat, out=_workspace(g, "k", k, (Kh, G * K, D)))
            vb = torch.index_select(v[b], 1, flat, out=_workspace(g, "v", v, (Kh, G * K, v.shape[-1])))
        else:
            kb, vb = k[b].index_select(1, flat), v[b].index_select(1, flat)
        kb = kb.unflatten(1, (G, K)).transpose(0, 1)  # (G, H, K, D)
        vb = vb.unflatten(1, (G, K)).transpose(0, 1)
        pad = None if key_padding_mask is None else key_padding_mask[b][keys]  # (G, K)
    mask = g.additive_mask(q.dtype, dev, Gq)  # (Gq c, K) with grouped heads: still one shared mask
    keep = None if g.row_keep is None else g.row_keep.to(device=dev, dtype=q.dtype).repeat(Gq, 1)
    if pad is not None:
        mask, has = _padding_mask(pad, g.mask, G, c, K, dev)
        keep = has.to(q.dtype) if g.row_keep is None else has.to(q.dtype) * g.row_keep.to(dev, q.dtype)
        if Gq > 1:
            mask, keep = mask.repeat(1, 1, Gq, 1), keep.repeat(1, 1, Gq, 1)
        if not bool_masks:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=dev).masked_fill_(~mask, float("-inf"))
    return qb, kb, vb, mask, keep


def unlayout_rows(x: torch.Tensor, H: int, c: int) -> torch.Tensor:
    """(G, Kh, Gq c, ...) in element_inputs' query layout -> (H, G c, ...) in row order."""
    G = x.shape[0]
    x = x.reshape(G, H, c, *x.shape[3:])
    return x.transpose(0, 1).reshape(H, G * c, *x.shape[3:])


def _run_group(g: Group, q, k, v, key_padding_mask, scale):
    """One group: per batch element, SDPA over (G, H, c, D) queries and (G, H, K, D) keys, the
    chunk index acting as SDPA's batch dimension (see `element_inputs`)."""
    B, H = q.shape[:2]
    c = g.rows.shape[1]
    reuse = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    outs = []
    for b in range(B):
        qb, kb, vb, mb, keep = element_inputs(g, b, q, k, v, key_padding_mask, reuse)
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mb, scale=scale)  # (G, Kh, Gq c, D)
        if keep is not None:
            out = out * keep
        outs.append(unlayout_rows(out, H, c))
    return torch.stack(outs)  # (B, H, G*c, D)


#: a group whose per-batch-element work (rows x keys per head) is below this runs the whole batch in
#: one SDPA call (batch folded into the chunk dimension); above it, one call per batch element
#: (whose sliding groups read k and v as views, with no copy)
FOLD_MAX_PAIRS = 1 << 21


def _run_group_folded(g: Group, q, k, v, key_padding_mask, scale):
    """One group for the whole batch in one SDPA call: the batch folded into SDPA's batch dimension
    with the chunks, (B G, H, c, D) queries against (B G, K_h, K, D) gathered keys. Costs a copy of
    the gathered keys (the per-element path reads sliding groups as views), and saves B - 1 calls:
    at short lengths and large batches the calls' overhead was the cost (fwd+bwd of
    sliding_window(64) at batch 32 took 4.6-6.8x as long as full)."""
    B, H, _, D = q.shape
    Kh = k.shape[1]
    Gq = H // Kh
    G, c = g.rows.shape
    K = g.keys.shape[1]
    dev = q.device
    if g.row_start is not None:
        qb = q.narrow(2, g.row_start, G * c)
    else:
        qb = q.index_select(2, g.rows.to(dev).reshape(-1))
    qb = qb.unflatten(2, (G, c)).permute(0, 2, 1, 3, 4)  # (B, G, H, c, D)
    qb = qb.reshape(B * G, Kh, Gq * c, D)  # (grouped-query heads as more rows of their kv head)
    if g.sliding:
        _, k0, step = g.sliding
        span = (G - 1) * step + K
        kb = k.narrow(2, k0, span).unfold(2, K, step)  # (B, Kh, G, D, K)
        vb = v.narrow(2, k0, span).unfold(2, K, step)
        kb = kb.permute(0, 2, 1, 4, 3).reshape(B * G, Kh, K, D)
        vb = vb.permute(0, 2, 1, 4, 3).reshape(B * G, Kh, K, v.shape[-1])
        pad = None
        if key_padding_mask is not None:
            pad = key_padding_mask.narrow(1, k0, span).unfold(1, K, step).reshape(B * G, K)
    else:
        flat = g.keys.to(dev).reshape(-1)
        kb = k.index_select(2, flat).unflatten(2, (G, K)).permute(0, 2, 1, 3, 4).reshape(B * G, Kh, K, D)
        vb = v.index_select(2, flat).unflatten(2, (G, K)).permute(0, 2, 1, 3, 4).reshape(B * G, Kh, K, -1)
        pad = None if key_padding_mask is None else key_padding_mask[:, g.keys.to(dev)].reshape(B * G, K)
    mask = g.additive_mask(q.dtype, dev, Gq)
    keep = None if g.row_keep is None else g.row_keep.to(device=dev, dtype=q.dtype).repeat(Gq, 1)
    if pad is not None:
        mask, has = _padding_mask(pad, g.mask, B * G, c, K, dev)
        keep = has.to(q.dtype) if g.row_keep is None else has.to(q.dtype) * g.row_keep.to(dev, q.dtype)
        if Gq > 1:
            mask, keep = mask.repeat(1, 1, Gq, 1), keep.repeat(1, 1, Gq, 1)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)  # (B G, Kh, Gq c, Dv)
    if keep is not None:
        out = out * keep
    out = out.reshape(B, G, H, c, -1).permute(0, 2, 1, 3, 4)  # (B, H, G, c, Dv)
    return out.reshape(B, H, G * c, -1)


def folds(g: Group, B: int, H: int) -> bool:
    """Whether group g runs with the batch folded into its chunk dimension (small groups, B > 1)."""
    return B > 1 and g.rows.shape[0] * g.rows.shape[1] * g.keys.shape[1] * H < FOLD_MAX_PAIRS


def run_plan(plan: Plan, q, k, v, key_padding_mask=None, scale=None):
    """q (B, H, n_q, D), k/v (B, H, n_k, D) -> (B, H, n_q, D), through SDPA and autograd."""
    B, H = q.shape[:2]

    def run(g):
        return (_run_group_folded if folds(g, B, H) else _run_group)(g, q, k, v, key_padding_mask, scale)

    outs = [run(g) for g in plan.groups]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out if plan.order is None else out.index_select(2, plan.order.to(q.device))


class PlanCache:
    """Plans depend only on (n_q, n_k, causal) and what a plugin adds (whether the call trains):
    build once per key, reuse every call."""

    def __init__(self, build: Callable[[int, int, bool], Plan], size: int = 8):
        self.build, self.size, self.plans = build, size, {}

    def __call__(self, n_q: int, n_k: int, causal: bool, *extra):
        key = (n_q, n_k, causal, *extra)
        if key not in self.plans:
            if len(self.plans) >= self.size:
                self.plans.pop(next(iter(self.plans)))
            self.plans[key] = self.build(n_q, n_k, causal, *extra)
        return self.plans[key]


def arange(a: int, b: int) -> torch.Tensor:
    return torch.arange(a, b, dtype=torch.long)
