"""Exact attention plugins that are wrong on purpose, each in one subtle way, for effattn's
integrity tests: a sweep must record none of them as `ok` where the wrong thing is computed.

Each declares itself exact with the pattern of `dense_mask` (every pair, or j <= i when causal,
unless its docstring says otherwise) and computes that pattern through SDPA, except for the one
thing its name says. None of them reads effattn: a plugin package knows only torch.
"""

import torch
import torch.nn.functional as F


class _Exact(torch.nn.Module):
    exact = True
    supports_causal = True
    supports_padding = True
    supports_gqa = False

    def dense_mask(self, n_q, n_k, causal=False):
        m = torch.ones(n_q, n_k, dtype=torch.bool)
        return m.tril() if causal else m

    def nnz(self, n_q, n_k, causal=False):
        return int(self.dense_mask(n_q, n_k, causal).sum())

    def attend(self, q, k, v, causal, key_padding_mask=None, mask=None):
        """Softmax attention over `mask` (default dense_mask's), without the padded keys; a row
        with no key gives zeros."""
        n_q, n_k = q.shape[2], k.shape[2]
        if mask is None and key_padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        allowed = (self.dense_mask(n_q, n_k, causal) if mask is None else mask).to(q.device)
        if key_padding_mask is not None:
            allowed = allowed & ~key_padding_mask[:, None, None, :]
        has_key = allowed.any(-1, keepdim=True)
        first = torch.zeros(n_k, dtype=torch.bool, device=q.device)
        first[0] = True
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | (~has_key & first))
        return out * has_key


class Scaled(_Exact):
    """Correct attention times 1.01."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        return self.attend(q, k, v, causal, key_padding_mask) * 1.01


class WrongMask(_Exact):
    """Declares a window of 4 (|i - j| <= 4) and computes full attention."""

    def dense_mask(self, n_q, n_k, causal=False):
        i = torch.arange(n_q)[:, None]
        j = torch.arange(n_k)[None, :]
        m = (i - j).abs() <= 4
        return m & (j <= i) if causal else m

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        return self.attend(q, k, v, causal, key_padding_mask, mask=super().dense_mask(q.shape[2], k.shape[2], causal))


class WrongPastLength(_Exact):
    """Correct up to n = 300; past it, the rows from 300 on are scaled by 1.05."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal, key_padding_mask)
        if q.shape[2] > 300:
            out = torch.cat([out[:, :, :300], out[:, :, 300:] * 1.05], 2)
        return out


class Noisy(_Exact):
    """Adds noise of about 1% of the mean |output| (seeded: the same at every call)."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal, key_padding_mask)
        g = torch.Generator().manual_seed(1)
        noise = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
        return out + 0.01 * out.detach().abs().mean() * noise


class WrongOnlyCausal(_Exact):
    """Correct without causal masking; with it, each query also sees the next key (j <= i + 1)."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if not causal:
            return self.attend(q, k, v, False, key_padding_mask)
        n_q, n_k = q.shape[2], k.shape[2]
        leak = torch.ones(n_q, n_k, dtype=torch.bool).tril(1)
        return self.attend(q, k, v, False, key_padding_mask, mask=leak)


class WrongOnlyPadded(_Exact):
    """Correct without padding; with a key_padding_mask it drops only the first padded key of
    each row (the rest of the padding is attended)."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if key_padding_mask is None:
            return self.attend(q, k, v, causal)
        first = key_padding_mask & (key_padding_mask.long().cumsum(1) == 1)
        return self.attend(q, k, v, causal, first)


class WrongInOneHead(_Exact):
    """Head 1 (of two or more) uses the scale 1/d instead of 1/sqrt(d); the others are correct."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal, key_padding_mask)
        if q.shape[1] < 2:
            return out
        d = q.shape[-1]
        q1 = q[:, 1:2] * (d**-0.5)  # SDPA scales by 1/sqrt(d) once more: 1/d in all
        kpm = key_padding_mask
        o1 = self.attend(q1, k[:, 1:2], v[:, 1:2], causal, kpm)
        return torch.cat([out[:, :1], o1, out[:, 2:]], 1)


class Nondeterministic(_Exact):
    """Each call adds fresh noise of 3e-6 of the mean |output|: below what float32 rounding
    could hide in one call's error, but two calls on the same inputs differ."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal, key_padding_mask)
        return out + 3e-6 * out.detach().abs().mean() * torch.randn(out.shape, device=out.device, dtype=out.dtype)


class OffByARow(_Exact):
    """Row i holds the correct row i - 1 (row 0 is correct): an index shifted by one."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal, key_padding_mask)
        return torch.cat([out[:, :, :1], out[:, :, :-1]], 2)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1.02


class WrongBackward(_Exact):
    """A correct forward whose gradient reaching q is 1.02 times the true one."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        return self.attend(_ScaleGrad.apply(q), k, v, causal, key_padding_mask)


class WrongLastRow(_Exact):
    """Every row correct but the last, which is zeros."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal, key_padding_mask)
        return torch.cat([out[:, :, :-1], torch.zeros_like(out[:, :, -1:])], 2)


class WindowOffByOne(_Exact):
    """Declares |i - j| <= window (default 8) and computes |i - j| <= window - 1."""

    def __init__(self, window: int = 8):
        super().__init__()
        self.window = window

    def _band(self, n_q, n_k, causal, w):
        i = torch.arange(n_q)[:, None]
        j = torch.arange(n_k)[None, :]
        m = (i - j).abs() <= w
        return m & (j <= i) if causal else m

    def dense_mask(self, n_q, n_k, causal=False):
        return self._band(n_q, n_k, causal, self.window)

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        mask = self._band(q.shape[2], k.shape[2], causal, self.window - 1)
        return self.attend(q, k, v, causal, key_padding_mask, mask=mask)
