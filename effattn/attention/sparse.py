"""Sparse Transformer factorised patterns (Child et al. 2019, arXiv:1904.10509), as one softmax.

* `strided`: (i, j) attends when |i - j| < s  or  (i - j) % s == 0.   Cost O(n * (2s + n/s)).
* `fixed`:   (i, j) attends when i // s == j // s  or  j % s >= s - c.  Cost O(n * (s + n c / s)).

`fixed` runs on the chunked SDPA engine (block rows; keys = own block + summary columns).
`strided` couples a band with a residue class per row, which no shared-mask chunking covers, so
it computes the two score sets explicitly - band scores per chunk of s rows, strided scores per
residue class (i mod s) - and normalises them in one joint softmax. The pair (i, i) lies in both
sets and is counted in the band only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_attention
from . import _chunked
from ._decode import KVDecoding, refuse_gqa
from .base import check_choice, check_int, softmax_scale


@register_attention("sparse")
class SparseAttention(KVDecoding, _chunked.PatternAttention):
    """Sparse Transformer strided or fixed pattern.

    Decoding keeps every key (a later row of either pattern may attend any earlier position:
    strided reaches back by multiples of s, fixed through each block's summary columns) and a
    step reads only the keys its row attends: strided the last s and every s-th before them,
    fixed its own block and the c summary keys of each earlier block."""

    complexity = "O(n·(s + n/s))"

    def __init__(self, pattern: str = "strided", stride: int = 128, summary: int = 8, backend: str = "auto"):
        super().__init__(backend)
        self.pattern = check_choice("pattern", pattern, ("strided", "fixed"))
        self.stride = check_int("stride", stride, 1)
        # summary only shapes the fixed pattern, where it cannot exceed the block (stride)
        self.summary = check_int("summary", summary, 1, self.stride if self.pattern == "fixed" else None)
        # strided's joint band + residue softmax is written for one key/value head per query head
        self.supports_gqa = self.pattern == "fixed" or backend == "dense"

    def pair_mask(self, i, j, causal: bool):
        s, c = self.stride, self.summary
        if self.pattern == "strided":
            m = ((i - j).abs() < s) | ((i - j) % s == 0)
        else:
            m = (i // s == j // s) | (j % s >= s - c)
        return m & (j <= i) if causal else m

    def step_keys(self, position: int) -> torch.Tensor:
        i, s = position, self.stride
        if self.pattern == "strided":
            band = torch.arange(max(0, i - s + 1), i + 1)
            far = torch.arange(i - s, -1, -s).flip(0) if i >= s else band[:0]
            return torch.cat([far, band])
        start = i // s * s
        cols = torch.arange(0, start)
        return torch.cat([cols[cols % s >= s - self.summary], torch.arange(start, i + 1)])

    # ------------------------------------------------------------------ fixed: chunked engine
    def _plan(self, n_q: int, n_k: int, causal: bool) -> _chunked.Plan:
        s, c = self.stride, self.summary
        A = _chunked.arange
        summary_cols = torch.arange(n_k)[torch.arange(n_k) % s >= s - c]
        chunks = []
        for start in range(0, n_q, s):
            end = min(start + s, n_q)
            own = A(start, min(start + s, n_k)) if start < n_k else A(0, 0)
            other = summary_cols[(summary_cols < start) | (summary_cols >= start + s)]
            if causal:
                other = other[other < start]
            keys = torch.cat([other, own])
            chunks.append((A(start, end), keys if keys.numel() else A(0, 1)))
        return _chunked.build_plan(chunks, lambda i, j: self.pair_mask(i, j, causal))

    # ------------------------------------------------------------------ strided: joint softmax
    def _strided(self, q, k, v, causal, key_padding_mask):
        B, H, n_q, D = q.shape
        n_k, s = k.shape[2], self.stride
        mq, mk = -(-n_q // s), -(-n_k // s)
        m = max(mq, mk)
        Nq, Nk = m * s, m * s
        scale = softmax_scale(D)
        qp = F.pad(q, (0, 0, 0, Nq - n_q))
        kp, vp = F.pad(k, (0, 0, 0, Nk - n_k)), F.pad(v, (0, 0, 0, Nk - n_k))
        valid = torch.arange(Nk, device=q.device) < n_k  # (Nk,)
        keep = valid[None, :].expand(B, Nk)
        if key_padding_mask is not None:
            keep = keep & ~F.pad(key_padding_mask, (0, Nk - n_k), value=True)
        # band: query block I (s rows) against keys [(I-1)s, (I+2)s)
        kb = F.pad(kp, (0, 0, s, s)).unfold(2, 3 * s, s)[:, :, :m].transpose(-1, -2)  # (B,H,m,3s,D)
        vb = F.pad(vp, (0, 0, s, s)).unfold(2, 3 * s, s)[:, :, :m].transpose(-1, -2)
        keepb = F.pad(keep, (s, s), value=False).unfold(1, 3 * s, s)[:, :m]  # (B,m,3s)
        qb = qp.view(B, H, m, s, D)
        a = torch.arange(s, device=q.device)[:, None]
        bcol = torch.arange(3 * s, device=q.device)[None, :] - s  # j - block start
        band_ok = (a - bcol).abs() < s
        if causal:
            band_ok = band_ok & (bcol <= a)
        band_ok = band_ok[None, None, None] & keepb[:, None, :, None, :]  # (B,1,m,s,3s)
        sb = (qb @ kb.transpose(-1, -2)) * scale  # (B,H,m,s,3s)
        # strided: residue r = i mod s, t = i // s; keys u with the same residue, u != t
        qr = qp.view(B, H, m, s, D).transpose(2, 3)  # (B,H,s,m,D)
        kr, vr = kp.view(B, H, m, s, D).transpose(2, 3), vp.view(B, H, m, s, -1).transpose(2, 3)
        keepr = keep.view(B, m, s).transpose(1, 2)  # (B,s,m)
        t = torch.arange(m, device=q.device)
        str_ok = (t[:, None] != t[None, :]) if not causal else (t[None, :] < t[:, None])
        str_ok = str_ok[None, None, None] & keepr[:, None, :, None, :]  # (B,1,s,m,m)
        sr = (qr @ kr.transpose(-1, -2)) * scale  # (B,H,s,m,m)
        neg = torch.finfo(sb.dtype).min
        sb = sb.masked_fill(~band_ok, neg)
        sr = sr.masked_fill(~str_ok, neg)
        mx = torch.maximum(sb.amax(-1).reshape(B, H, Nq), sr.amax(-1).transpose(2, 3).reshape(B, H, Nq))
        mx = mx.detach()
        eb = torch.exp(sb - mx.view(B, H, m, s, 1)) * band_ok
        er = torch.exp(sr - mx.view(B, H, m, s).transpose(2, 3)[..., None]) * str_ok
        num = (eb @ vb).reshape(B, H, Nq, -1) + (er @ vr).transpose(2, 3).reshape(B, H, Nq, -1)
        den = eb.sum(-1).reshape(B, H, Nq) + er.sum(-1).transpose(2, 3).reshape(B, H, Nq)
        out = num / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]  # empty rows: 0/tiny = 0
        return out[:, :, :n_q]

    def _chunked(self, q, k, v, causal, key_padding_mask):  # strided has its own path
        if self.pattern == "strided":
            refuse_gqa("sparse(pattern=strided)", q, k)
            self.last_backend = "band+residue-softmax"
            return self._strided(q, k, v, causal, key_padding_mask)
        return super()._chunked(q, k, v, causal, key_padding_mask)

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        if self.pattern == "fixed":
            return super().nnz(n_q, n_k, causal)
        s = self.stride
        i = torch.arange(n_q)
        band = (torch.minimum(i + s, torch.tensor(n_k)) - torch.clamp(i - s + 1, min=0)).clamp(min=0)
        if causal:
            band = (torch.minimum(i + 1, torch.tensor(n_k)) - torch.clamp(i - s + 1, min=0)).clamp(min=0)
        res = i % s
        count = (n_k - 1 - res).div(s, rounding_mode="floor") + 1  # keys with j = i (mod s), j < n_k
        count = torch.where(res < n_k, count, torch.zeros_like(count))
        if causal:
            count = i // s + 1
        in_band = (i < n_k).long()
        return int((band + count - in_band).sum())
