"""Decoding checked: prefill, then step after step, equals the causal forward."""

from __future__ import annotations

import torch

from ..decoding import cache_nbytes, decoder_for
from .suite import EXACT_RTOL, Failures, PluginRaised, Skip, Suite, check, inputs, kv_heads, rel_err

#: steps decoded in the longest run of `decode_matches_causal_forward`, and the prompt lengths
DECODE_STEPS, DECODE_PROMPTS = 320, (1, 17, 64)
#: relative error allowed between decoding and the causal forward, for an approximate plugin that
#: does not state its own (`decode_rtol`)
DECODE_RTOL_APPROX = 1e-4


@check("decode_matches_causal_forward")
def decode_matches_causal_forward(s: Suite):
    """Prefill then step by step equals the causal forward: the prefill's output is the prompt's
    causal output, and step t's is the last row of the causal forward over the p + t + 1 tokens
    seen (compared to one forward over the whole sequence first; where a row differs - a pattern
    that depends on the length, like BigBird's last global block - to the forward over exactly that
    prefix). Several prompt lengths, over DECODE_STEPS steps; with a left-padded prompt where the
    plugin takes padding, and with fewer key/value heads where it takes grouped-query heads."""
    if not s.facts.supports_decode:
        raise Skip("the plugin does not declare supports_decode (it is decoded by recomputation)")
    rtol = EXACT_RTOL if s.facts.exact else float(s.facts.decode_rtol or DECODE_RTOL_APPROX)
    try:
        dec = decoder_for(s.attn)
    except Exception as e:
        raise AssertionError(str(e)) from e
    kvs = kv_heads(s.heads) if s.facts.supports_gqa else []
    runs = [(DECODE_PROMPTS[0], DECODE_STEPS, s.heads, False)]
    runs += [(p, 40, s.heads, s.facts.supports_padding) for p in DECODE_PROMPTS[1:]]
    runs += [(DECODE_PROMPTS[1], 40, K, False) for K in kvs]
    fails, seen = Failures(), _Seen()
    batch = max(2, s.batch) if s.facts.supports_padding else s.batch
    for p, T, K, padded in runs:
        where = f"prompt {p}, {T} steps" + (f", K={K}" if K != s.heads else "") + (", padded" if padded else "")
        fails.case(where, lambda p=p, T=T, K=K, padded=padded: _decode_run(s, dec, batch, p, T, K, padded, rtol, seen))
    fails.raise_any()
    return f"{seen.steps} steps over {len(runs)} runs; worst relative error {seen.worst:.1e} (allowed {rtol:g})"


class _Seen:
    steps, worst = 0, 0.0


def _decode_run(s: Suite, dec, batch: int, p: int, T: int, K: int, padded: bool, rtol: float, seen: _Seen) -> None:
    """A prompt of p tokens (row 1 left-padded by a third where `padded`), then T steps."""
    n = p + T
    q, k, v = inputs(batch, s.heads, n, n, s.head_dim, torch.float32, s.device, s.seed + 11)
    k, v = k[:, :K].contiguous(), v[:, :K].contiguous()
    kpm = None
    if padded:  # as a batch of prompts would be
        kpm = torch.zeros(batch, n, dtype=torch.bool, device=s.device)
        kpm[1, : max(1, p // 3)] = True

    def forward(m):
        mask = None if kpm is None else kpm[:, :m]
        return s.call(q[:, :, :m], k[:, :, :m], v[:, :, :m], causal=True, key_padding_mask=mask)

    with torch.no_grad():
        try:
            cache = dec.new_cache(batch, K, s.head_dim, dtype=torch.float32, device=s.device)
            out = dec.prefill(cache, q[:, :, :p], k[:, :, :p], v[:, :, :p],
                              key_padding_mask=None if kpm is None else kpm[:, :p])  # fmt: skip
        except Exception as e:
            raise PluginRaised(f"the plugin raised {type(e).__name__}: {e}") from e
        whole = forward(n)
        assert tuple(out.shape) == (batch, s.heads, p, s.head_dim), f"prefill output shape {tuple(out.shape)}"
        err = rel_err(out, whole[:, :, :p])
        if err > rtol:
            err = rel_err(out, forward(p))
        assert err <= rtol, f"prefill of {p} tokens: relative error {err:.2e} against the causal forward"
        for t in range(T):
            _decode_step(s, dec, cache, (q, k, v), whole, forward, p + t, t, batch, rtol, seen)
        length = getattr(cache, "length", None)
        assert length in (None, n), f"the cache says it holds {length} tokens after {n}"
        if hasattr(cache, "nbytes"):
            nb = cache_nbytes(cache)
            assert nb is not None and nb >= 0, "the cache's nbytes() is not a number of bytes"


def _decode_step(s: Suite, dec, cache, qkv, whole, forward, i: int, t: int, batch: int, rtol: float, seen) -> None:
    """Step t (token i) against the last row of the causal forward over the i + 1 tokens."""
    q, k, v = qkv
    try:
        row = dec.step(cache, q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1])
    except Exception as e:
        raise PluginRaised(f"step {t}: the plugin raised {type(e).__name__}: {e}") from e
    want = (batch, s.heads, 1, s.head_dim)
    assert isinstance(row, torch.Tensor) and tuple(row.shape) == want, (
        f"step {t} returned {tuple(row.shape) if isinstance(row, torch.Tensor) else type(row).__name__}, want {want}"
    )
    err = rel_err(row, whole[:, :, i : i + 1])
    if err > rtol:  # the definition: the last row of the forward over this prefix
        err = rel_err(row, forward(i + 1)[:, :, -1:])
    seen.worst = max(seen.worst, err)
    assert err <= rtol, f"step {t} (token {i}): relative error {err:.2e} against the causal forward"
    seen.steps += 1
