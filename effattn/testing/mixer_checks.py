"""The conformance suite of the sequence mixers (plugins of kind "mixer", docs/mixers.md).

A mixer has no softmax to be checked against, so its checks are about the contract: the shape and
dtype it returns, finite outputs and gradients, causality by value (changing a later token changes
no earlier output, and does change its own), padding (a padded token is as if absent: the kept
tokens' outputs equal those of the row without it, padded outputs are 0), empty input, decoding
equal to the full forward with a state that does not grow, determinism (two calls, two builds),
rows of a batch independent, and every parameter reached by the gradient. `run_checks` and
`check_attention` (effattn.testing) send a mixer here; each check is a function in MIXER_CHECKS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UnsupportedError
from .suite import CheckResult, Skip, rel_err

#: relative disagreement allowed in float64 between two computations that should be equal
#: (chunked forward against the token-by-token recurrence; a row alone against it in a batch)
F64_RTOL = 1e-9
MIXER_CHECKS: list[tuple[str, Callable]] = []


def mixer_check(fn):
    MIXER_CHECKS.append((fn.__name__, fn))
    return fn


@dataclass
class MixerSuite:
    build: Callable[[], torch.nn.Module]
    rebuilds_from_name: bool
    device: str
    batch: int
    seq_lens: tuple[int, ...]
    seed: int

    def x(self, n: int, dtype=torch.float64, batch: int | None = None, seed_offset: int = 0):
        m = self.module(dtype)
        g = torch.Generator().manual_seed(self.seed + seed_offset)
        return torch.randn(batch or self.batch, n, m.d_model, generator=g, dtype=torch.float64).to(self.device, dtype)

    def module(self, dtype=torch.float64):
        m = self.build().to(self.device, dtype)
        m.train(False)
        return m


def _close(a, b, what: str, rtol: float = F64_RTOL) -> None:
    e = rel_err(a, b)
    assert e <= rtol, f"{what}: relative error {e:.2e} > {rtol:g}"


@mixer_check
def shape_and_dtype(s: MixerSuite):
    for dtype in (torch.float32, torch.float64):
        m = s.module(dtype)
        for n in s.seq_lens:
            y = m(s.x(n, dtype), causal=True)
            assert isinstance(y, torch.Tensor), f"returned a {type(y).__name__}"
            want = (s.batch, n, m.d_model)
            assert tuple(y.shape) == want and y.dtype == dtype, (
                f"n={n} {dtype}: got {y.dtype} {tuple(y.shape)}, want {want}"
            )
            assert torch.isfinite(y).all(), f"n={n} {dtype}: non-finite output"


@mixer_check
def refuses_non_causal(s: MixerSuite):
    m = s.module()
    try:
        m(s.x(5), causal=False)
    except UnsupportedError:
        return "causal=False refused (UnsupportedError)"
    raise AssertionError("causal=False was accepted: a causal recurrence must refuse it with UnsupportedError")


@mixer_check
def causal_by_value(s: MixerSuite):
    m = s.module()
    n = max(s.seq_lens)
    if n < 3:
        raise Skip("needs n >= 3")
    x = s.x(n)
    y = m(x, causal=True)
    for t in (1, n // 2, n - 1):
        x2 = x.clone()
        x2[:, t] += 3.0
        y2 = m(x2, causal=True)
        before = (y2[:, :t] - y[:, :t]).abs().max().item()
        assert before == 0.0 or before <= 1e-12 * y.abs().max().item(), (
            f"changing token {t} changed earlier outputs by {before:.2e}"
        )
        assert (y2[:, t] - y[:, t]).abs().max().item() > 0, f"changing token {t} did not change its own output"


@mixer_check
def padding_is_absence(s: MixerSuite):
    m = s.module()
    n = max(max(s.seq_lens), 6)
    x = s.x(n, batch=2)
    pad = torch.zeros(2, n, dtype=torch.bool, device=s.device)
    pad[0, 1], pad[0, n - 2 :] = True, True  # a hole and a tail
    pad[1, :] = True  # a row of nothing
    y = m(x, causal=True, key_padding_mask=pad)
    kept = ~pad[0]
    alone = m(x[:1, kept], causal=True)
    _close(y[0, kept], alone[0], "row 0's kept tokens against the row without its padded ones")
    assert y.masked_select(pad[..., None]).abs().max().item() == 0, "padded positions' outputs are not 0"
    x2 = x.clone()
    x2[0, 1] += 5.0
    y2 = m(x2, causal=True, key_padding_mask=pad)
    assert (y2 - y).abs().max().item() <= 1e-12, "a padded token's value changed the outputs"


@mixer_check
def empty_input(s: MixerSuite):
    m = s.module()
    x = s.x(0).requires_grad_(True)
    y = m(x, causal=True)
    assert tuple(y.shape) == (s.batch, 0, m.d_model), f"got {tuple(y.shape)}"
    y.sum().backward()
    x0 = torch.zeros(0, 5, m.d_model, dtype=x.dtype, device=x.device, requires_grad=True)  # no rows
    y0 = m(x0, causal=True)
    assert tuple(y0.shape) == (0, 5, m.d_model), f"batch 0: got {tuple(y0.shape)}"
    y0.sum().backward()


@mixer_check
def decoding_equals_forward(s: MixerSuite):
    m = s.module()
    n = max(max(s.seq_lens), 8)
    x = s.x(n)
    full = m(x, causal=True)
    p, r = n // 3, (2 * n) // 3
    state = m.new_cache(s.batch, dtype=torch.float64, device=s.device)
    outs = [m.prefill(state, x[:, :p])]
    size = state.nbytes()
    for t in range(p, r):
        outs.append(m.step(state, x[:, t : t + 1]))
    outs.append(m.prefill(state, x[:, r:]))  # a prefill that continues a state (a later prompt)
    _close(torch.cat(outs, 1), full, f"prefill of {p} tokens, {r - p} steps, a prefill of {n - r} against the forward")
    assert state.nbytes() == size, (
        f"the state grew with the context: {size} bytes after {p} tokens, {state.nbytes()} after {n}"
    )
    assert state.length == n, f"the state counts {state.length} tokens, {n} were given"
    return f"state {size} bytes, constant from {p} to {n} tokens"


@mixer_check
def deterministic(s: MixerSuite):
    m = s.module()
    x = s.x(max(s.seq_lens))
    a, b = m(x, causal=True), m(x, causal=True)
    assert torch.equal(a, b), "two calls on the same input differ"
    if s.rebuilds_from_name:
        assert torch.equal(s.module()(x, causal=True), a), "two builds with the same options differ"


@mixer_check
def rows_independent(s: MixerSuite):
    m = s.module()
    x = s.x(max(s.seq_lens), batch=3)
    y = m(x, causal=True)
    for i in range(3):
        _close(m(x[i : i + 1], causal=True)[0], y[i], f"row {i} alone against row {i} in a batch of 3")


@mixer_check
def gradients(s: MixerSuite):
    m = s.module()
    m.train(True)
    x = s.x(max(max(s.seq_lens), 5)).requires_grad_(True)
    y = m(x, causal=True)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype).to(y.device)
    (y * w).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, (
        "no finite gradient reaches x"
    )
    none = [nm for nm, p in m.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    bad = [nm for nm, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {', '.join(bad)}"
    assert not none, f"parameters the gradient does not reach: {', '.join(none)}"


def run_mixer_checks(build, rebuilds_from_name, *, seq_lens, batch, device, seed, only=None, on_result=None):
    suite = MixerSuite(build, rebuilds_from_name, device, batch, tuple(seq_lens), seed)
    results = []
    for name, fn in MIXER_CHECKS:
        if only is not None and name != only:
            continue
        try:
            detail = fn(suite)
        except Skip as e:
            results.append(CheckResult(name, True, str(e), skipped=True))
        except AssertionError as e:
            results.append(CheckResult(name, False, str(e)))
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, reported by name
            results.append(CheckResult(name, False, f"the mixer raised {type(e).__name__}: {e}"))
        else:
            results.append(CheckResult(name, True, detail or ""))
        if on_result:
            on_result(results[-1])
    return results
