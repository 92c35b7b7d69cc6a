"""FlexAttention backend for the exact pattern plugins (torch.nn.attention.flex_attention).

A plugin's element-wise `pair_mask(i, j, causal)` is exactly a FlexAttention `mask_mod`;
`create_block_mask` turns it into a block-sparse layout and the compiled kernel skips empty
blocks. Compiled FlexAttention is fast (measured here: ~83 useful GFLOP/s on a CPU band)
but compiles for seconds per new shape, and on CPU it has no backward: there this backend
serves inference only and refuses a call that needs gradients.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..errors import UnsupportedError


def flex_available() -> str | None:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401 - importing it is the check
    except Exception as e:  # noqa: BLE001 - any import failure makes it unavailable, with the reason
        return f"FlexAttention not available in torch {torch.__version__}: {e}"
    return None


#: compiled variants of flex_attention one process may hold. Each (shape, pattern, gradient
#: mode) compiles once; a sweep of many lengths and patterns needs dozens. Past torch's default
#: limit (8) Dynamo silently runs flex_attention eagerly, which materialises every n x n score
#: (measured on an H200: sliding_window at 16k fwd+bwd took 60 GB and ran 3x slower than full).
#: Past this limit the call fails instead, saying why.
RECOMPILE_LIMIT = 512


@lru_cache(maxsize=1)
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    # fullgraph: a graph break would also fall back to the eager, dense path; fail instead
    return torch.compile(flex_attention, dynamic=False, fullgraph=True)


#: from this many (query, key) pairs on, the block mask is built by a compiled kernel: built
#: eagerly, `create_block_mask` evaluates the mask over all n_q x n_k pairs at once (measured here:
#: 4 GiB at n = 16384, against 1 MiB compiled; the first call's peak memory counts it). Below it,
#: on CPU, the eager build is cheap and compiling would cost seconds per shape.
COMPILED_MASK_PAIRS = 1 << 24


def _run_compiled(fn):
    import torch._dynamo

    limit = RECOMPILE_LIMIT
    try:
        with torch._dynamo.config.patch(
            recompile_limit=limit,
            fail_on_recompile_limit_hit=True,
            accumulated_recompile_limit=max(limit, torch._dynamo.config.accumulated_recompile_limit),
        ):
            return fn()
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        raise UnsupportedError(
            f"backend 'flex': FlexAttention was compiled {limit} times in this process; rather than "
            "fall back to eager FlexAttention (which materialises every n x n score) this call fails. "
            "Measure fewer lengths or patterns per process, or use backend='chunked'"
        ) from None


def flex_forward(pair_mask, q, k, v, causal: bool, key_padding_mask, cache: dict):
    """Run `pair_mask` (i, j -> bool, causal folded in) through compiled FlexAttention."""
    why = flex_available()
    if why:
        raise UnsupportedError(f"backend 'flex': {why}")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if q.device.type == "cpu" and needs_grad:
        raise UnsupportedError("backend 'flex': FlexAttention has no backward on CPU; use backend='chunked'")
    from torch.nn.attention.flex_attention import create_block_mask

    B, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    if key_padding_mask is None:

        def mask_mod(b, h, i, j):
            return pair_mask(i, j)

        key = (n_q, n_k, causal, str(q.device), None)
        mask_b = None
    else:
        keep = ~key_padding_mask

        def mask_mod(b, h, i, j):
            return pair_mask(i, j) & keep[b, j]

        key, mask_b = None, B  # the padding differs per call: no caching
    block_mask = cache.get(key) if key is not None else None
    if block_mask is None:
        compiled = q.device.type == "cuda" or n_q * n_k >= COMPILED_MASK_PAIRS
        block_mask = _run_compiled(
            lambda: create_block_mask(mask_mod, mask_b, None, n_q, n_k, device=q.device, _compile=compiled)
        )
        if key is not None:
            cache[key] = block_mask
    gqa = q.shape[1] != k.shape[1]
    out = _run_compiled(lambda: _compiled()(q, k, v, block_mask=block_mask, enable_gqa=gqa))
    if key_padding_mask is not None:  # rows left with no key: zeros, as everywhere in effattn
        pattern_rows = keep.any(-1)[:, None, None, None].to(out.dtype)
        out = out * pattern_rows
    return out
