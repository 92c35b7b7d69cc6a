"""NSA, Native Sparse Attention (Yuan et al. 2025, arXiv:2502.11089).

Three branches over the same queries, mixed by gates (docs/semantics.md states each formula):

- compressed: keys and values of blocks of l tokens taken every d tokens are compressed into one
  key and one value each, k~_s = sum_p w_k[p] k_{s d + p} (likewise v~ with w_v); query t
  attends the compressed blocks that end at or before t (causal);
- selected: keys in blocks of l'. Each block j is scored from the compressed branch's attention
  probabilities, p_slc[j] = sum_s p_cmp[s] * |block s ∩ block j| (the paper's eq. 9, written for any
  l, d, l'); query t keeps the first block and its `local_blocks` latest blocks (its own, then the
  ones before it), then the best-scored others up to `top_n` blocks in all, and attends their
  tokens (j <= t when causal);
- sliding window: the last w keys, t - w < j <= t.

  out_t = g_cmp(t) o_cmp(t) + g_slc(t) o_slc(t) + g_swa(t) o_swa(t),
  g(t) = sigmoid(q_t W_g + b_g)  (three gates per query head).

The plugin sees only q, k, v, so the paper's learned pieces are replaced by documented ones that
live in this module: the compression phi (an MLP with intra-block position encoding in the paper)
is a learned weight per block position, w_k, w_v in R^l, initialised to mean pooling (w = 1/l, the
compression fla-org/flash-linear-attention's `fla/ops/nsa` uses); the gates (an MLP with a sigmoid
on the layer input x in the paper) are a linear map of the query, W_g (max_head_dim, 3) whose first
D rows are used (as linformer slices its projections to the first n rows), drawn from `seed`, and
b_g = -ln 2, so that each gate starts near 1/3 and the untrained output is on the scale of one
attention. Choices taken from fla's naive reference (fla/ops/nsa/naive.py, read, not copied): the
window is the last w keys (flash-attn's `window_size=(w - 1, 0)`), a compressed block is visible
once its last token is at or before t, and the forced blocks are the first, the query's own and the
previous one (the paper's "1 initial block and 2 local blocks").

Which blocks are selected depends on the data, so there is no `dense_mask`: the plugin is
approximate in effattn's sense (its error against `full` is reported); `nsa_reference` below
computes the same definition densely in float64 and the tests compare against it. No gradient
flows through the choice of blocks (top-n is discrete, as in the paper); gradients reach q, k, v
and the parameters through the three softmaxes, the compression and the gates.

Grouped-query heads: query head h reads key/value head h // (H / K), and every query head selects
its own blocks; the paper shares one selection per group (summing p_slc over the group's heads),
which its kernel needs, but effattn's contract is that a GQA call equals the call on k, v repeated
to H heads, which a shared selection would break. Without causal masking (an encoder; NSA is a
decoder design) the same rules hold without `j <= t`: every compressed block is visible, every
key block is a candidate, and the window is |t - j| < w. Self-attention only (the blocks and the
query's own block are defined on one sequence).

Memory and work: the compressed branch is n x (n / d). The selected branch runs block-major: for
each key block, the queries that kept it are gathered and score its l' keys in one batched matmul
(a row's softmax over its blocks is merged online, one tile at a time, when no gradient is
needed; under autograd through a per-row maximum and scatter-adds, keeping the n * top_n * l'
probabilities for the backward), and no key is copied per query. The window branch runs over chunks
of rows against their contiguous slice of keys. No n x n tensor is formed:
O(n (n/d + top_n l' + w)) memory, in plain PyTorch, forward and backward by autograd.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import OptionError, UnsupportedError
from ..registry import register_attention
from .base import AttentionBase, check_int


def _softmax_av(s, ok, v):
    """Softmax of scores `s` over the keys where `ok`, times `v`; a row with no allowed key gives
    zeros, with finite gradients."""
    s = s.masked_fill(~ok, float("-inf"))
    top = s.amax(-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    p = torch.exp(s - top)
    return (p @ v) / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


def compressed_kv(attn, k, v=None, key_padding_mask=None):
    """(k~, v~, dropped): the m_c = floor((n - l) / d) + 1 compressed keys and values
    (B, K, m_c, D) (v~ None without v), and the (B, m_c) bool of blocks that hold a padded key
    (never attended)."""
    bl, d = attn.block_size, attn.block_stride
    B, K, n, D = k.shape
    if n < bl:
        vc = None if v is None else v.new_zeros(B, K, 0, v.shape[-1])
        return k.new_zeros(B, K, 0, D), vc, torch.zeros(B, 0, dtype=torch.bool, device=k.device)
    kc = k.unfold(2, bl, d) @ attn.w_k.to(k.dtype)  # (B, K, m_c, D, bl) @ (bl,) -> (B, K, m_c, D)
    vc = None if v is None else v.unfold(2, bl, d) @ attn.w_v.to(v.dtype)
    if key_padding_mask is None:
        dropped = torch.zeros(B, kc.shape[2], dtype=torch.bool, device=k.device)
    else:
        dropped = key_padding_mask.unfold(1, bl, d).any(-1)  # (B, m_c)
    return kc, vc, dropped


def compressed_visible(attn, n: int, m_c: int, causal: bool, device=None):
    """(n, m_c) bool: compressed block s (tokens [s d, s d + l)) is visible to query t when it ends
    at or before t (causal), always otherwise."""
    t = torch.arange(n, device=device)[:, None]
    end = torch.arange(m_c, device=device)[None, :] * attn.block_stride + attn.block_size - 1
    return end <= t if causal else torch.ones(n, m_c, dtype=torch.bool, device=device)


def overlap(attn, m_c: int, m_s: int, device=None, dtype=torch.float32):
    """(m_c, m_s): tokens shared by compressed block s, [s d, s d + l), and key block j,
    [j l', (j + 1) l') - the weights of the paper's eq. 9, for any l, d, l'."""
    s0 = torch.arange(m_c, device=device)[:, None] * attn.block_stride
    j0 = torch.arange(m_s, device=device)[None, :] * attn.select_size
    lo = torch.maximum(s0, j0)
    hi = torch.minimum(s0 + attn.block_size, j0 + attn.select_size)
    return (hi - lo).clamp_min(0).to(dtype)


def compressed_branch(attn, q, kc, vc, dropped, causal: bool):
    """(o_cmp, p_cmp): p_cmp (B, H, n, m_c) the softmax of q_t . k~_s / sqrt(D) over the visible,
    undropped compressed blocks (zeros for a row with none) and o_cmp = p_cmp v~; k~ and v~ already
    have H heads."""
    B, H, n, D = q.shape
    m_c = kc.shape[2]
    if m_c == 0:
        return q.new_zeros(B, H, n, vc.shape[-1]), q.new_zeros(B, H, n, 0)
    ok = compressed_visible(attn, n, m_c, causal, q.device)[None, None] & ~dropped[:, None, None, :]
    s = ((q @ kc.transpose(-1, -2)) * D**-0.5).masked_fill(~ok, float("-inf"))
    top = s.amax(-1, keepdim=True).detach()
    p = torch.exp(s - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return p @ vc, p


def forced_blocks(attn, n: int, m_s: int, device=None):
    """(n, m_s) bool: the blocks query t always keeps: block 0 and its `local_blocks` latest
    (t // l', t // l' - 1, ...)."""
    t = torch.arange(n, device=device)[:, None]
    j = torch.arange(m_s, device=device)[None, :]
    own = t // attn.select_size
    return (j == 0) | ((j <= own) & (j > own - attn.local_blocks))


def choose_blocks(attn, p_cmp, causal: bool, key_padding_mask=None):
    """(B, H, n, top_n) long from p_cmp: the key blocks each query keeps, -1 where fewer than top_n
    are candidates. Rank: forced blocks first, then candidates by p_slc = p_cmp @ overlap, ties to
    the lower block index (a stable sort); candidates are blocks that start at or before t (causal)
    and hold an unpadded key."""
    with torch.no_grad():
        p = p_cmp.detach().to(torch.promote_types(p_cmp.dtype, torch.float32))
        B, H, n, m_c = p.shape
        ls = attn.select_size
        m_s = -(-n // ls)
        score = p @ overlap(attn, m_c, m_s, p.device, p.dtype)  # (B, H, n, m_s); zeros when m_c = 0
        j = torch.arange(m_s, device=p.device)
        cand = torch.ones(B, 1, n, m_s, dtype=torch.bool, device=p.device)
        if causal:
            cand = cand & (j[None, :] * ls <= torch.arange(n, device=p.device)[:, None])
        if key_padding_mask is not None:
            pad = nn.functional.pad(key_padding_mask, (0, m_s * ls - n), value=True).view(B, m_s, ls).all(-1)
            cand = cand & ~pad[:, None, None, :]
        forced = forced_blocks(attn, n, m_s, p.device)
        score = score.masked_fill(~cand, float("-inf")).masked_fill(forced, float("inf"))
        order = torch.sort(score, dim=-1, descending=True, stable=True)
        idx, kept = order.indices[..., : attn.top_n], order.values[..., : attn.top_n] > float("-inf")
        idx = torch.where(kept, idx, torch.full_like(idx, -1))
        return nn.functional.pad(idx, (0, attn.top_n - idx.shape[-1]), value=-1)


def select_blocks(attn, q, k, causal: bool, key_padding_mask=None):
    """The blocks the forward selects (see `choose_blocks`), from q and k alone; k may have fewer
    heads than q."""
    with torch.no_grad():
        kc, _, dropped = compressed_kv(attn, k.detach(), None, key_padding_mask)
        kc = kc.repeat_interleave(q.shape[1] // k.shape[1], 1)
        _, p = compressed_branch(attn, q.detach(), kc, kc, dropped, causal)
        return choose_blocks(attn, p, causal, key_padding_mask)


def gates(attn, q):
    """(B, H, n, 3): sigmoid(q_t W_g + b_g) for (compressed, selected, window)."""
    D = q.shape[-1]
    return torch.sigmoid(q @ attn.gate_weight[:D].to(q.dtype) + attn.gate_bias.to(q.dtype))


def selected_branch(attn, q, k, v, idx, causal: bool, key_padding_mask=None):
    """o_slc (B, H, n, Dv), block-major: for each key block J, the queries that kept it (gathered,
    padded to the most any (batch, head) has) score its l' keys in one batched matmul. A row's
    softmax over its blocks is merged online, tile by tile and in place, when no gradient is needed
    (one tile held at a time); under autograd, through a per-row maximum over every tile and
    scatter-adds (the tiles' n * top_n * l' probabilities are kept for the backward). No (n x n)
    tensor and no keys gathered per query. k, v have H heads."""
    B, H, n, D = q.shape
    Dv, ls = v.shape[-1], attn.select_size
    m_s, BH = -(-n // ls), B * H
    pad = m_s * ls - n
    kb = nn.functional.pad(k, (0, 0, 0, pad)).reshape(BH, m_s, ls, D)
    vb = nn.functional.pad(v, (0, 0, 0, pad)).reshape(BH, m_s, ls, Dv)
    qf = nn.functional.pad(q, (0, 0, 0, 1)).reshape(BH, n + 1, D)  # row n: the padding row (zeros)
    with torch.no_grad():
        idx = idx.reshape(BH, n, -1)
        sel = torch.zeros(BH, n, m_s + 1, dtype=torch.bool, device=q.device)
        sel.scatter_(2, torch.where(idx >= 0, idx, m_s), True)
        sel = sel[..., :m_s].transpose(1, 2)  # (BH, m_s, n): row t kept block J
        t = torch.arange(n, device=q.device)
        rows_all = torch.where(sel, t, n).sort(-1).values  # the kept rows first, in order, then n
        n_max = sel.sum(-1).amax(0).tolist()  # (m_s,)
        keep = torch.ones(BH, m_s, ls, dtype=torch.bool, device=q.device)
        if key_padding_mask is not None:
            kp = nn.functional.pad(key_padding_mask, (0, pad), value=True).view(B, 1, m_s, ls)
            keep = ~kp.expand(B, H, m_s, ls).reshape(BH, m_s, ls)
        keep = keep & (torch.arange(m_s * ls, device=q.device) < n).view(1, m_s, ls)
    scale = D**-0.5
    tracked = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)

    def tile(J):
        rows = rows_all[:, J, : n_max[J]]  # (BH, N), n where padded
        s = (qf.gather(1, rows[..., None].expand(-1, -1, D)) @ kb[:, J].transpose(-1, -2)) * scale
        ok = (rows < n)[..., None] & keep[:, J, None, :]
        if causal:
            ok = ok & (torch.arange(J * ls, (J + 1) * ls, device=q.device) <= rows[..., None])
        return rows, s.masked_fill(~ok, float("-inf"))

    blocks = [J for J in range(m_s) if n_max[J]]
    if not blocks:  # (block 0 is always kept, so only n = 0 gets here)
        return q.new_zeros(B, H, n, Dv)
    tiny = torch.finfo(q.dtype).tiny
    if not tracked:  # no autograd: one tile at a time, merged online (flash-style), in place
        top = q.new_full((BH, n + 1), float("-inf"))
        den, num = q.new_zeros(BH, n + 1), q.new_zeros(BH, n + 1, Dv)
        for J in blocks:
            rows, s = tile(J)
            rows_v = rows[..., None].expand(-1, -1, Dv)
            old = top.gather(1, rows)
            new = torch.maximum(old, s.amax(-1))
            safe = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
            p = s.sub_(safe[..., None]).exp_()
            corr = torch.exp(torch.where(torch.isfinite(old), old - safe, torch.full_like(old, float("-inf"))))
            den.scatter_(1, rows, den.gather(1, rows) * corr + p.sum(-1))
            num.scatter_(1, rows_v, num.gather(1, rows_v) * corr[..., None] + p @ vb[:, J])
            top.scatter_(1, rows, new)
        return (num[:, :n] / den[:, :n, None].clamp_min(tiny)).view(B, H, n, Dv)
    # with autograd: every tile's scores first, the per-row maximum over them, then one scatter-add
    tiles = [(J, *tile(J)) for J in blocks]
    top = q.new_full((BH, n + 1), float("-inf"))
    for _, rows, s in tiles:
        top = top.scatter_reduce(1, rows, s.detach().amax(-1), "amax")
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    rows = torch.cat([r for _, r, _ in tiles], 1)  # (BH, sum N)
    p = [torch.exp(s - top.gather(1, r)[..., None]) for _, r, s in tiles]
    pv = torch.cat([pj @ vb[:, J] for (J, _, _), pj in zip(tiles, p)], 1)  # (BH, sum N, Dv)
    den = q.new_zeros(BH, n + 1).scatter_add(1, rows, torch.cat([pj.sum(-1) for pj in p], 1))
    num = q.new_zeros(BH, n + 1, Dv).scatter_add(1, rows[..., None].expand(-1, -1, Dv), pv)
    return (num[:, :n] / den[:, :n, None].clamp_min(tiny)).view(B, H, n, Dv)


def window_chunk(attn, n: int) -> int:
    """Rows per chunk of the window branch: `chunk`, or w (at least 64, at most n)."""
    return attn.chunk or max(1, min(n, max(64, attn.window)))


def window_branch(attn, q, k, v, causal: bool, key_padding_mask=None):
    """o_swa (B, H, n, Dv): t - w < j <= t (|t - j| < w without causal), over chunks of rows,
    each against its contiguous slice of keys. k, v have H heads."""
    B, H, n, D = q.shape
    w, Dv = attn.window, v.shape[-1]
    if w == 0:
        return q.new_zeros(B, H, n, Dv)
    c, outs = window_chunk(attn, n), []
    for r0 in range(0, n, c):
        r1 = min(n, r0 + c)
        lo, hi = max(0, r0 - w + 1), min(n, r1 if causal else r1 + w - 1)
        i = torch.arange(r0, r1, device=q.device)[:, None]
        j = torch.arange(lo, hi, device=q.device)[None, :]
        ok = ((i - j).abs() < w) & ((j <= i) if causal else True)
        ok = ok[None, None] if key_padding_mask is None else ok & ~key_padding_mask[:, None, None, lo:hi]
        s = (q[:, :, r0:r1] @ k[:, :, lo:hi].transpose(-1, -2)) * D**-0.5
        outs.append(_softmax_av(s, ok, v[:, :, lo:hi]))
    return torch.cat(outs, 2)


def branches(attn, q, k, v, causal: bool, key_padding_mask=None):
    """(o_cmp, o_slc, o_swa, idx): the three branch outputs, each (B, H, n, Dv), and the selected
    blocks (B, H, n, top_n). k, v may have fewer heads than q."""
    rep = q.shape[1] // k.shape[1]
    kc, vc, dropped = compressed_kv(attn, k, v, key_padding_mask)
    o_cmp, p_cmp = compressed_branch(attn, q, kc.repeat_interleave(rep, 1), vc.repeat_interleave(rep, 1),
                                     dropped, causal)  # fmt: skip
    idx = choose_blocks(attn, p_cmp, causal, key_padding_mask)
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    o_slc = selected_branch(attn, q, k, v, idx, causal, key_padding_mask)
    o_swa = window_branch(attn, q, k, v, causal, key_padding_mask)
    return o_cmp, o_slc, o_swa, idx


def nsa_reference(attn, q, k, v, causal: bool, key_padding_mask=None, parts: bool = False):
    """NSA computed densely in float64 from explicit masks: the compressed keys by a loop over
    blocks, each branch's (n, keys) mask built pair by pair from its rule, a masked softmax per
    branch (rows with no key: zeros), then the gates. The selected blocks come from
    `select_blocks` (checked against a per-query loop in the tests). With `parts`, returns
    (o_cmp, o_slc, o_swa, gates) instead of their sum."""
    q, k, v = q.double(), k.double(), v.double()
    H, K = q.shape[1], k.shape[1]
    idx = select_blocks(attn, q, k, causal, key_padding_mask)
    k, v = k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1)
    B, _, n, D = q.shape
    bl, d, ls, w = attn.block_size, attn.block_stride, attn.select_size, attn.window
    wk, wv = attn.w_k.double(), attn.w_v.double()
    starts = list(range(0, n - bl + 1, d)) if n >= bl else []
    unpadded = torch.ones(B, n, dtype=torch.bool) if key_padding_mask is None else ~key_padding_mask.cpu()

    def softmax(scores, allowed, values):  # allowed (B, 1 or H, n, m)
        scores = scores.masked_fill(~allowed, float("-inf"))
        has = allowed.any(-1, keepdim=True)
        p = torch.where(has, scores, torch.zeros_like(scores)).softmax(-1) * allowed
        return p @ values

    out = []
    if starts:
        kc = torch.stack([sum(wk[p] * k[:, :, s + p] for p in range(bl)) for s in starts], 2)
        vc = torch.stack([sum(wv[p] * v[:, :, s + p] for p in range(bl)) for s in starts], 2)
        allowed = torch.zeros(B, 1, n, len(starts), dtype=torch.bool)
        for b in range(B):
            for t in range(n):
                for i, s in enumerate(starts):
                    allowed[b, 0, t, i] = (not causal or s + bl - 1 <= t) and bool(unpadded[b, s : s + bl].all())
        out.append(softmax(q @ kc.transpose(-1, -2) / D**0.5, allowed, vc))
    else:
        out.append(q.new_zeros(B, H, n, v.shape[-1]))
    scores = q @ k.transpose(-1, -2) / D**0.5
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    base = unpadded[:, None, None, :] & ((j <= i) if causal else torch.ones(n, n, dtype=torch.bool))
    kept = torch.zeros(B, H, n, n, dtype=torch.bool)  # (query, key): the key's block was selected
    for J in range(-(-n // ls)):
        kept[..., J * ls : (J + 1) * ls] = (idx == J).any(-1, keepdim=True)
    out.append(softmax(scores, kept & base, v))
    out.append(softmax(scores, ((i - j).abs() < w) & base, v))
    g = torch.sigmoid(q @ attn.gate_weight[:D].double() + attn.gate_bias.double())
    if parts:
        return (*out, g)
    return sum(g[..., b : b + 1] * o for b, o in enumerate(out))


@register_attention("nsa")
class NativeSparseAttention(AttentionBase):
    """NSA: gated compressed, top-n selected-block and sliding-window branches (Yuan et al. 2025)."""

    exact = False  # exact to its definition, but the selected blocks depend on the data: no dense_mask
    complexity = "O(n·(n/d + n_sel·l' + w))"
    supports_cross = False  # blocks and the query's own block are defined on one sequence
    supports_gqa = True
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = (
        {"block_size": 8, "block_stride": 4, "select_size": 8, "top_n": 3, "window": 6, "local_blocks": 1},
        {"block_size": 6, "block_stride": 4, "select_size": 5, "top_n": 2, "window": 3, "local_blocks": 0, "chunk": 7},
    )

    def __init__(
        self,
        block_size: int = 32,
        block_stride: int = 16,
        select_size: int = 64,
        top_n: int = 16,
        window: int = 512,
        local_blocks: int = 2,
        max_head_dim: int = 256,
        seed: int = 0,
        chunk: int = 0,
    ):
        super().__init__()
        self.block_size = check_int("block_size", block_size, 1)
        self.block_stride = check_int("block_stride", block_stride, 1, self.block_size)
        self.select_size = check_int("select_size", select_size, 1)
        self.top_n = check_int("top_n", top_n, 1)
        self.window = check_int("window", window, 0)
        self.local_blocks = check_int("local_blocks", local_blocks, 0)
        if self.local_blocks + 1 > self.top_n:
            raise OptionError(
                f"option top_n must be at least local_blocks + 1 = {self.local_blocks + 1} (the first block and "
                f"the {self.local_blocks} local blocks are always selected and count towards top_n), got {self.top_n}"
            )
        self.max_head_dim = check_int("max_head_dim", max_head_dim, 1)
        self.seed = check_int("seed", seed, 0)
        self.chunk = check_int("chunk", chunk, 0)
        g = torch.Generator().manual_seed(self.seed)
        self.w_k = nn.Parameter(torch.full((self.block_size,), 1.0 / self.block_size))
        self.w_v = nn.Parameter(torch.full((self.block_size,), 1.0 / self.block_size))
        self.gate_weight = nn.Parameter(torch.randn(self.max_head_dim, 3, generator=g) * 0.02)
        self.gate_bias = nn.Parameter(torch.full((3,), -math.log(2.0)))

    def extra_repr(self) -> str:
        return (f"block_size={self.block_size}, block_stride={self.block_stride}, select_size={self.select_size}, "
                f"top_n={self.top_n}, window={self.window}, local_blocks={self.local_blocks}")  # fmt: skip

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """Forward matmul FLOPs, without padding: compression (2·l·D per compressed key and value),
        the compressed branch (4·D per query and compressed block), the block scores (2 per query,
        compressed block and key block), the gates (6·D per query), the selected branch (4·D per
        query and key of each kept block, masked keys of a block included: kept blocks are
        min(top_n, t // l' + 1) causal, min(top_n, m_s) otherwise, whatever the data), and the
        window branch (4·D per query and key of its chunk's slice). The block-major selected branch
        pads each key block's queries to the most any (batch, head) has; that padding is not
        counted (it is zero when every row keeps all its candidate blocks)."""
        n, D, BH = n_k, head_dim, batch * heads
        bl, d, ls, w = self.block_size, self.block_stride, self.select_size, self.window
        m_c = (n - bl) // d + 1 if n >= bl else 0
        m_s = -(-n // ls)
        flops = 2 * 2 * batch * kv_heads * m_c * bl * D + BH * n * (4 * m_c * D + 2 * m_c * m_s + 6 * D)
        if causal:
            kept = sum(min(self.top_n, t // ls + 1) for t in range(n))
        else:
            kept = n * min(self.top_n, m_s)
        flops += 4 * D * BH * kept * ls
        if w:
            c = window_chunk(self, n)
            for r0 in range(0, n, c):
                r1 = min(n, r0 + c)
                flops += 4 * D * BH * (r1 - r0) * (min(n, r1 if causal else r1 + w - 1) - max(0, r0 - w + 1))
        return int(flops)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if q.shape[-1] > self.max_head_dim:
            raise UnsupportedError(
                f"nsa: head_dim {q.shape[-1]} exceeds max_head_dim {self.max_head_dim} (the gate weights have "
                "max_head_dim rows; pass a larger max_head_dim)"
            )
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.last_backend = "block-major"
        o_cmp, o_slc, o_swa, _ = branches(self, q, k, v, causal, key_padding_mask)
        g = gates(self, q)
        return g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_swa
