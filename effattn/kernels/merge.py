"""Exact attention over a pattern cut into pieces, merged by log-sum-exp.

A pattern whose rows do not share one key layout (strided: a band plus a residue class; fixed:
its own block plus the summary columns every row sees; BigBird: band, globals and random blocks)
is cut into pieces: each piece is a `chunked.Plan` over a subset of the pairs, and for every row
the pieces' pair sets are disjoint and their union is the row's pattern. Each piece is computed by
the CPU flash kernel, which returns its rows' log-sum-exp L_p alongside the output O_p; the rows
are merged exactly:

    L = log sum_p exp(L_p),      O = sum_p exp(L_p - L) O_p.

So each piece keeps a layout the kernel runs well (a band as an unfold view with no copy, keys
every row shares as one long query block against them, ...), where one joint softmax needed a
gather of every row's keys or an explicit score matrix.

Backward: the flash kernel's backward takes the output and log-sum-exp the forward produced;
handed the MERGED O and L instead, it computes each piece's share of the gradient of the one
joint softmax (P_ij = exp(s_ij - L_i) is the joint probability, and the row term
D_i = dO_i . O_i is the joint one), so the pieces' gradients are summed with no correction. The
same identity merges the blocks of ring attention (Liu et al. 2023, arXiv:2310.01889).

Off the CPU (or where the kernel is missing) each piece is computed with explicit scores and
autograd does the rest: exact, O(chunk rows x keys) memory per group, slower.
"""

from __future__ import annotations

import torch

from . import chunked

#: the log-sum-exp handed to the backward for rows a piece does not reach: exp(s - BIG) = 0
_BIG = 1e30


def _flash_ops():
    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    return (fwd, bwd) if fwd is not None and bwd is not None else None


def kernel_ok(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and _flash_ops() is not None


def _piece_math(qb, kb, vb, mask, scale):
    """Explicit-score (out, lse) of one group's batch element: differentiable by autograd."""
    s = (qb @ kb.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    lse = torch.logsumexp(s, -1)
    return torch.softmax(s, -1) @ vb, lse


def _piece_flash(qb, kb, vb, mask, scale):
    out, lse = _flash_ops()[0](qb, kb, vb, attn_mask=mask, scale=scale)
    return out, lse


def _plan_out_lse(plan: chunked.Plan, q, k, v, key_padding_mask, scale, kernel, buffers=None):
    """One piece over every batch element: (O_p (B, H, n_q, Dv), L_p (B, H, n_q)); rows the piece
    does not reach, and rows left with no key, get O_p = 0 and L_p = -inf. Each group's output is
    written straight into O_p (a fresh tensor, or `buffers` when given): on this kind of machine
    every pass over fresh memory costs page faults, so no stack / cat / reorder passes."""
    B, H, n_q = q.shape[:3]
    Dv = v.shape[-1]
    flash = kernel is _piece_flash
    covered = sum(g.rows.numel() for g in plan.groups) == n_q
    if buffers is not None:
        Out, L = buffers
        if not covered:
            Out.zero_(), L.fill_(float("-inf"))
    else:
        # the log-sum-exp in at least float32, as the kernel returns it for 16-bit inputs
        ld = torch.promote_types(q.dtype, torch.float32)
        Out = q.new_empty(B, H, n_q, Dv) if covered else q.new_zeros(B, H, n_q, Dv)
        L = q.new_empty(B, H, n_q, dtype=ld) if covered else q.new_full((B, H, n_q), float("-inf"), dtype=ld)
    for g in plan.groups:
        G, c = g.rows.shape
        rows = None if g.row_start is not None else g.rows.reshape(-1).to(q.device)
        for b in range(B):
            # the flash path runs without autograd: its gather buffers may be reused
            qb, kb, vb, mask, keep = chunked.element_inputs(g, b, q, k, v, key_padding_mask, flash, not flash)
            o, lse = kernel(qb, kb, vb, mask, scale)
            if keep is not None:
                o = o * keep
                lse = lse.masked_fill(keep[..., 0] == 0, float("-inf"))
            lse = lse.to(L.dtype)
            if rows is None:
                Out[b].narrow(1, g.row_start, G * c).unflatten(1, (G, c)).copy_(o.reshape(G, H, c, Dv).transpose(0, 1))
                L[b].narrow(1, g.row_start, G * c).unflatten(1, (G, c)).copy_(lse.reshape(G, H, c).transpose(0, 1))
            else:
                Out[b].index_copy_(1, rows, chunked.unlayout_rows(o, H, c))
                L[b].index_copy_(1, rows, chunked.unlayout_rows(lse, H, c))
    return Out, L


def _merge_into(Out, L, Op, Lp):
    """Merge piece (Op, Lp) into the running (Out, L): in place without autograd (Op is scratch)."""
    Ln = torch.logaddexp(L, Lp)
    floor = Ln.clamp_min(torch.finfo(Ln.dtype).min)  # rows nothing reached: every weight exp(-inf) = 0
    a, b = torch.exp(L - floor)[..., None], torch.exp(Lp - floor)[..., None]
    if torch.is_grad_enabled() and (Out.requires_grad or Op.requires_grad):
        return Out * a + Op * b, Ln
    return Out.mul_(a).add_(Op.mul_(b)), Ln


def _scratch(plan: chunked.Plan, Out: torch.Tensor, L: torch.Tensor):
    """A (O_p, L_p) buffer pair shaped like (Out, L), kept on the plan between calls."""
    key = (tuple(Out.shape), Out.dtype, L.dtype, str(Out.device))
    got = plan._scratch
    if got is None or got[0] != key:
        got = (key, (torch.empty_like(Out), torch.empty_like(L)))
        plan._scratch = got
    return got[1]


def _run(plans, q, k, v, key_padding_mask, scale, kernel):
    """Every piece, merged: (Out, L)."""
    Out, L = _plan_out_lse(plans[0], q, k, v, key_padding_mask, scale, kernel)
    grad = torch.is_grad_enabled() and kernel is not _piece_flash
    for p in plans[1:]:
        # the later pieces write into a scratch pair kept on the plan (fresh memory costs page
        # faults on every call: the merge of strided's two pieces at 8k took 3.5-14 ms)
        scratch = None if grad else _scratch(p, Out, L)
        Op, Lp = _plan_out_lse(p, q, k, v, key_padding_mask, scale, kernel, scratch)
        Out, L = _merge_into(Out, L, Op, Lp)
    return Out, L


def _layout_rows(x, rows, G: int, c: int, Kh: int):
    """(H, n, ...) row-space values of one group's rows -> the query layout of `element_inputs`."""
    x = x.index_select(1, rows).unflatten(1, (G, c)).transpose(0, 1)
    return x.reshape(G, Kh, -1, *x.shape[3:]).contiguous()


class _Merged(torch.autograd.Function):
    """The flash-kernel path: pieces forward, merged; backward per piece from the merged Out, L."""

    @staticmethod
    def forward(ctx, q, k, v, plans, key_padding_mask, scale):
        Out, L = _run(plans, q, k, v, key_padding_mask, scale, _piece_flash)
        ctx.save_for_backward(q, k, v, Out, L)
        ctx.plans, ctx.kpm, ctx.scale = plans, key_padding_mask, scale
        return Out

    @staticmethod
    def backward(ctx, dO):
        q, k, v, Out, L = ctx.saved_tensors
        bwd = _flash_ops()[1]
        B, H = q.shape[:2]
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        Lb = torch.where(torch.isfinite(L), L, torch.full_like(L, _BIG))
        dO = dO.contiguous()
        for plan in ctx.plans:
            for g in plan.groups:
                G, c = g.rows.shape
                K = g.keys.shape[1]
                Kh = k.shape[1]
                rows = g.rows.reshape(-1).to(q.device)
                keys = g.keys.reshape(-1).to(q.device)
                for b in range(B):
                    qb, kb, vb, mask, keep = chunked.element_inputs(g, b, q, k, v, ctx.kpm, True, False)

                    lse = _layout_rows(Lb[b], rows, G, c, Kh)
                    if keep is not None:
                        lse = lse.masked_fill(keep[..., 0] == 0, _BIG)
                    gq, gk, gv = bwd(
                        _layout_rows(dO[b], rows, G, c, Kh),
                        qb,
                        kb,
                        vb,
                        _layout_rows(Out[b], rows, G, c, Kh),
                        lse,
                        0.0,
                        False,
                        attn_mask=mask,
                        scale=ctx.scale,
                    )
                    dq[b].index_add_(1, rows, chunked.unlayout_rows(gq, H, c))
                    dk[b].index_add_(1, keys, gk.transpose(0, 1).reshape(Kh, G * K, -1))
                    dv[b].index_add_(1, keys, gv.transpose(0, 1).reshape(Kh, G * K, -1))
        return dq, dk, dv, None, None, None


def run_pieces(plans: list[chunked.Plan], q, k, v, key_padding_mask=None, scale=None):
    """q (B, H, n_q, D), k/v (B, Kh, n_k, D) -> (B, H, n_q, Dv): softmax attention over the union
    of the pieces' pairs (disjoint per row)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if kernel_ok(q):
        return _Merged.apply(q, k, v, plans, key_padding_mask, scale)
    return _run(plans, q, k, v, key_padding_mask, scale, _piece_math)[0]
