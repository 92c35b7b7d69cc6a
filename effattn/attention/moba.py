"""MoBA, mixture of block attention (Lu et al. 2025, arXiv:2502.13189).

Keys are cut into blocks of b. Query i scores every block it may see by q_i . mean(k in block),
keeps its own block always and the `top_k - 1` best of the others, and attends (softmax over the
union) the tokens of the kept blocks; with causal masking only blocks that start at or before i are
candidates and j <= i inside them (the paper's setting, for decoders). Which blocks are kept depends
on the data, so the pattern has no `dense_mask`: the plugin is approximate (its error against
`full` is reported), and `moba_reference` below computes the same definition densely in float64
(the test against it is the exactness check).

Computed without any n x n tensor: for each key block, the queries that kept it attend it in one
matmul, with a running log-sum-exp per query row merging the blocks (flash-style); O(n * top_k * b)
time and O(n * b) memory per block step. Forward and backward in plain PyTorch.

Short calls (B * H * n_q * n_k at most `DENSE_MAX_ELEMENTS`) compute the same definition as one
masked SDPA call instead (backend `dense-masked`): the block loop's Python overhead, one small
matmul and three index_puts per (batch, head, block), dominates there, and the short training
tasks (batch 32, n = 64 or 128) are such calls.
"""

from __future__ import annotations

import torch

from ..kernels.masks import causal_mask, dense_attention
from ..registry import register_attention
from .base import AttentionBase, check_int

#: calls with B * H * n_q * n_k at most this run as one masked SDPA call; None: never (the tests
#: of the block loop set this)
DENSE_MAX_ELEMENTS: int | None = 1 << 22


def block_scores(q, k, block: int, causal: bool, key_padding_mask=None):
    """(B, H, n_q, m) gate scores q . mean(k in block) - the mean over the block's unpadded keys -
    with -inf where a block may not be kept (causal: blocks starting after i; a block of padding
    only), and the (n_q, m) own-block indicator."""
    B, H, n_k, D = k.shape
    n_q = q.shape[2]
    m = -(-n_k // block)
    pad = m * block - n_k
    keep = torch.ones(B, n_k, dtype=k.dtype, device=k.device)
    if key_padding_mask is not None:
        keep = (~key_padding_mask).to(k.dtype)
    keep = torch.nn.functional.pad(keep, (0, pad)).view(B, 1, m, block, 1)
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(B, H, m, block, D)
    counts = keep.sum(3)  # (B, 1, m, 1)
    means = (kp * keep).sum(3) / counts.clamp_min(1)  # (B, H, m, D): padded keys do not move the gate
    s = q @ means.transpose(-1, -2)  # (B, H, n_q, m)
    s = s.masked_fill(counts[..., 0][:, :, None, :] == 0, float("-inf"))
    i = torch.arange(n_q, device=q.device)[:, None]
    starts = torch.arange(m, device=q.device)[None, :] * block
    own = (i // block) == torch.arange(m, device=q.device)[None, :]  # (n_q, m)
    if causal:
        s = s.masked_fill(starts > i, float("-inf"))
    return s, own


def select_blocks(q, k, block: int, top_k: int, causal: bool, key_padding_mask=None):
    """(B, H, n_q, m) bool: the blocks each query keeps (its own, then the best top_k - 1 others)."""
    s, own = block_scores(q, k, block, causal, key_padding_mask)
    own = own.expand_as(s)
    s = s.masked_fill(own, float("-inf"))  # own block: kept anyway, not competing
    kept = own.clone()
    extra = min(top_k - 1, s.shape[-1])
    if extra > 0:
        kept = kept | _finite_choice(s, s.topk(extra, dim=-1))
    return kept


def _finite_choice(s, top):
    """The top-k choices that are real candidates (a finite score), as a (..., m) mask."""
    ok = torch.isfinite(top.values)
    return torch.zeros(s.shape, dtype=torch.bool, device=s.device).scatter_(-1, top.indices, ok)


def kept_mask(kept, block: int, n_k: int, causal: bool, key_padding_mask=None):
    """(B, H, n_q, n_k) bool: the keys of the kept blocks, j <= i when causal, padding removed."""
    allowed = kept.repeat_interleave(block, -1)[..., :n_k]
    if causal:
        allowed = allowed & causal_mask(kept.shape[2], n_k, kept.device)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    return allowed


def moba_reference(q, k, v, block: int, top_k: int, causal: bool, key_padding_mask=None):
    """MoBA computed densely in float64: the kept blocks as an (n_q, n_k) mask per row, then masked
    softmax (rows with no key: zeros)."""
    q, k, v = q.double(), k.double(), v.double()
    kept = select_blocks(q, k, block, top_k, causal, key_padding_mask)  # (B, H, n_q, m)
    allowed = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril() if causal else True
    allowed = kept.repeat_interleave(block, -1)[..., : k.shape[2]] & allowed
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    has = allowed.any(-1, keepdim=True)
    p = torch.where(has, scores, torch.zeros_like(scores)).softmax(-1) * allowed
    return p @ v


@register_attention("moba")
class MoBAAttention(AttentionBase):
    """MoBA: each query attends its own key block and its top_k - 1 best-gated others."""

    exact = False  # exact to its definition, but the kept blocks depend on the data: no dense_mask
    complexity = "O(n·k·b)"
    supports_cross = False  # blocks and own block are defined on one sequence
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"block_size": 8, "top_k": 2}, {"block_size": 5, "top_k": 1})

    def __init__(self, block_size: int = 256, top_k: int = 3):
        super().__init__()
        self.block_size = check_int("block_size", block_size, 1)
        self.top_k = check_int("top_k", top_k, 1)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "block-gather"
        b = self.block_size
        B, H, n, D = q.shape
        with torch.no_grad():  # the selection is discrete: no gradient flows through the gate
            kept = select_blocks(q, k, b, self.top_k, causal, key_padding_mask)  # (B, H, n, m)
        m = kept.shape[-1]
        if DENSE_MAX_ELEMENTS is not None and B * H * n * n <= DENSE_MAX_ELEMENTS:
            self.last_backend = "dense-masked"
            return dense_attention(q, k, v, kept_mask(kept, b, n, causal, key_padding_mask))
        scale = D**-0.5
        Dv = v.shape[-1]
        qf, kf, vf = q.reshape(B * H, n, D), k.reshape(B * H, n, D), v.reshape(B * H, n, Dv)
        keptf = kept.reshape(B * H, n, m)
        padf = None if key_padding_mask is None else key_padding_mask.repeat_interleave(H, 0)  # (B H, n)
        outs = []
        for bh in range(B * H):  # per (batch, head): only the queries that kept block J compute it
            run_max = q.new_full((n, 1), float("-inf"))
            den = q.new_zeros(n, 1)
            num = q.new_zeros(n, Dv)
            for J in range(m):
                rows = keptf[bh, :, J].nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                lo, hi = J * b, min(n, (J + 1) * b)
                s = (qf[bh, rows] @ kf[bh, lo:hi].T) * scale  # (N, <= b)
                ok = torch.ones_like(s, dtype=torch.bool)
                if causal:
                    ok = torch.arange(lo, hi, device=q.device)[None, :] <= rows[:, None]
                if padf is not None:
                    ok = ok & ~padf[bh, lo:hi][None, :]
                s = s.masked_fill(~ok, float("-inf"))
                old = run_max[rows]
                new = torch.maximum(old, s.amax(-1, keepdim=True)).detach()
                safe = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
                p = torch.exp(s - safe)  # (exp(-inf) = 0 where masked)
                corr = torch.exp(torch.where(torch.isfinite(old), old - safe, torch.full_like(old, float("-inf"))))
                den = den.index_put((rows,), den[rows] * corr + p.sum(-1, keepdim=True))
                num = num.index_put((rows,), num[rows] * corr + p @ vf[bh, lo:hi])
                run_max = run_max.index_put((rows,), new)
            outs.append(num / den.clamp_min(torch.finfo(den.dtype).tiny))
        return torch.stack(outs).view(B, H, n, Dv)

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """Forward matmul FLOPs: the gate (q . block means, 2·n·m·D) and, for each query, scores
        and their product with V over every key of its kept blocks (4·D per pair; masked pairs
        inside a block are computed too). Causal: the own block and min(top_k, blk + 1) - 1 earlier
        (full) blocks, exact. Non-causal the kept blocks besides the own one depend on the data:
        counted at the mean size of the other blocks (exact when every block has b keys)."""
        b = self.block_size
        m = -(-n_k // b)
        size = lambda blk: max(0, min(b, n_k - blk * b))
        pairs = 0
        for blk in range(-(-n_q // b)):
            rows = min(b, n_q - blk * b)
            own = size(blk) if blk < m else 0
            if causal:
                others = (min(self.top_k, blk + 1) - 1) * b
            else:
                others = (min(self.top_k, m) - 1) * (n_k - own) / max(1, m - 1)
            pairs += rows * (own + others)
        return int(batch * heads * (2 * n_q * m * head_dim + 4 * head_dim * pairs))
