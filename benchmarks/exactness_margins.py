"""How close the exact built-ins come to the float64 reference, per dtype: the evidence behind
`effattn.reference.TOLERANCE`, the bound beyond which a sweep records an exact point as `error`.

    python benchmarks/exactness_margins.py                  # n = 255, 1024, 4096; every dtype
    python benchmarks/exactness_margins.py --lens 255,1024 --dtypes float32

For every exact built-in available here, at each length, causal or not, with and without key
padding: the forward's relative error against `reference_attention` over its own `dense_mask`,
and (float32, bfloat16) the gradients' under a fixed upstream gradient. Prints the worst error per
variant and dtype and its margin (tolerance / worst); exits 1 when a margin is below 1.
"""

from __future__ import annotations

import argparse
import sys

import torch

from effattn import create_attention, get_entry, list_attention
from effattn.reference import GRAD_TOLERANCE_FACTOR, reference_attention, rel_err, tolerance
from effattn.spec import parse_seq_lens

# options that make each pattern sparse at these lengths (the defaults' windows cover n = 255)
OPTIONS = {
    "sliding_window": {"window": 64, "global_tokens": 3},
    "sliding_window_sinks": {"window": 64, "sinks": 4},
    "sparse": {"stride": 32},
    "bigbird": {"block_size": 32},
}


def exact_builtins() -> list[str]:
    out = []
    for name in list_attention():
        e = get_entry(name)
        if e.source == "builtin" and e.facts.exact and e.availability("cpu") is None and name != "flex":
            if not getattr(e.target, "wraps", None):
                out.append(name)
    return out


def worst_error(name: str, dtype: str, lens: list[int], grads: bool) -> tuple[float, float]:
    """(worst forward error, worst gradient error) over the cases."""
    torch.manual_seed(0)
    attn = create_attention(name, **OPTIONS.get(name, {}))
    facts = get_entry(name).facts
    dt = getattr(torch, dtype)
    fwd = grad = 0.0
    for n in lens:
        for causal in (False, True) if facts.supports_causal else (False,):
            for padded in (False, True) if facts.supports_padding else (False,):
                g = torch.Generator().manual_seed(n)
                q, k, v = (torch.randn(1, 4, n, 64, generator=g).to(dt) for _ in range(3))
                kpm = None
                if padded:
                    kpm = torch.zeros(1, n, dtype=torch.bool)
                    kpm[0, n - n // 3 :] = True
                allowed = attn.dense_mask(n, n, causal)
                want_grad = grads and n <= 1024
                qs, ks, vs = (t.clone().requires_grad_(want_grad) for t in (q, k, v))
                out = attn(qs, ks, vs, causal=causal, key_padding_mask=kpm)
                qr, kr, vr = (t.double().requires_grad_(want_grad) for t in (q, k, v))
                ref = reference_attention(qr, kr, vr, allowed, key_padding_mask=kpm)
                fwd = max(fwd, rel_err(out, ref))
                if want_grad:
                    up = torch.randn(out.shape, generator=g)
                    (out.float() * up).sum().backward()
                    (ref * up.double()).sum().backward()
                    for a, b in ((qs, qr), (ks, kr), (vs, vr)):
                        grad = max(grad, rel_err(a.grad, b.grad))
    return fwd, grad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lens", default="255,1024,4096")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16,float64")
    a = ap.parse_args(argv)
    lens = parse_seq_lens(a.lens)
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("float32", "bfloat16", "float16", "float64")]
    if bad or not dtypes:
        sys.exit(f"exactness_margins: --dtypes {a.dtypes!r}: choose from float32, bfloat16, float16, float64")
    print(f"{'variant':22s} {'dtype':9s} {'forward':>9s} {'margin':>7s} {'grads':>9s} {'margin':>7s}")
    low = False
    for name in exact_builtins():
        for dtype in dtypes:
            declared = get_entry(name).facts.dtypes
            if dtype not in declared:
                continue
            fwd, grad = worst_error(name, dtype, lens, grads=dtype in ("float32", "bfloat16"))
            tol = tolerance(dtype)
            m_f = tol / fwd if fwd else float("inf")
            m_g = tol * GRAD_TOLERANCE_FACTOR / grad if grad else float("nan")
            low |= m_f < 1 or m_g < 1
            g_text = f"{grad:9.1e} {m_g:7.0f}" if grad else f"{'-':>9s} {'-':>7s}"
            print(f"{name:22s} {dtype:9s} {fwd:9.1e} {m_f:7.0f} {g_text}", flush=True)
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
