"""Is an exact plugin's point a correct computation? The check every exact point passes before
it is timed.

An exact plugin declares its pattern (`dense_mask`); its output must then equal masked softmax
attention over that pattern, computed in float64 (`effattn.reference`), to within what rounding in
the sweep's dtype allows (`effattn.reference.TOLERANCE`). At the point's own length and on the
inputs it is timed on, the check compares

* the forward of the swept configuration: every query row up to ALL_ROWS_MAX_N, sampled rows
  (`effattn.reference.sample_rows`) up to MASK_MAX_N;
* two calls on the same inputs (determinism, to a few units in the last place);
* a call with key padding (batch row 0's last third padded), where the plugin supports padding;
* the other masking (causal in a bidirectional sweep, and the reverse), where it supports both;
* under `fwdbwd`, the gradients reaching q, k and v, for an upstream gradient on sampled rows.

The last three run on the first head alone (the forward compares every head): they cost a
head's work, not the point's.

Beyond MASK_MAX_N the reference's n x n mask is too large and the row says the check was not
made; a reference that would outlast the --timeout is abandoned, and the row says that too. A
failed comparison makes the point `error`, with every measured figure in the row.
"""

from __future__ import annotations

import torch

from .. import contract
from ..reference import (
    GRAD_TOLERANCE_FACTOR,
    ReferenceTimeout,
    determinism_tolerance,
    reference_attention,
    rel_err,
    sample_rows,
    tolerance,
)
from .validate import check_output

#: every query row is compared up to this length
ALL_ROWS_MAX_N = 4096
#: the check needs dense_mask(n, n): n^2 booleans (256 MiB at 16k)
MASK_MAX_N = 16384
#: rows an upstream gradient is put on under fwdbwd
GRAD_ROWS = 128


def _fingerprint(mask: torch.Tensor) -> tuple:
    """Which dense pattern this is, cheaply: all pairs, or its exact bytes' hash."""
    n_q, n_k = mask.shape
    if bool(mask.all()):
        return ("all", n_q, n_k)
    import hashlib

    return ("bytes", n_q, n_k, hashlib.sha1(mask.cpu().numpy().tobytes()).hexdigest())


def applies(core) -> str | None:
    """None when the point's exactness can be checked, else why not (an approximate plugin, or an
    exact one that declares no pattern)."""
    facts = contract.facts(core)
    if not facts.exact:
        return "not applicable: an approximate plugin"
    if not facts.has_dense_mask:
        return "not checked: the plugin declares no dense_mask"
    return None


def synthetic_inputs(spec, n: int):
    """q, k, v of the core's shape for levels whose timed inputs are not q, k, v (layer, model)."""
    g = torch.Generator().manual_seed(spec.seed + n + 1)
    dtype = getattr(torch, spec.dtype)
    B, H, D = spec.batch, spec.heads, spec.head_dim
    K = spec.kv_heads or H

    def mk(heads):
        return torch.randn(B, heads, n, D, generator=g).to(device=spec.device, dtype=dtype)

    return mk(H), mk(K), mk(K)


class _Invalid(Exception):
    """A call made for the check returned no valid output (wrong shape, dtype, NaN...)."""


class _Findings:
    def __init__(self, dtype: str):
        self.dtype, self.figures, self.failures, self.done = dtype, {}, [], []

    def compare(self, what: str, err: float, tol: float, how: str) -> None:
        self.figures[what] = err
        if not err <= tol:  # (a NaN error fails too)
            self.failures.append(f"{how} by {err:.2e} (relative; {self.dtype} rounding stays below {tol:.0e})")
        else:
            self.done.append(what)


def check(spec, core, qkv, outputs, reference, beat, deadline: float | None) -> tuple[dict, str | None]:
    """Check an exact point. `qkv`: the inputs (detached); `outputs`: two forward outputs already
    made on them without gradients (or None: the check makes them); `reference(key, compute)`:
    a cache shared by the variants of the length (`InputSet.reference`); `beat()`: called as
    each call of the plugin starts. Returns (the measurement's fields, the reason the point is wrong
    or None)."""
    why = applies(core)
    cols = {"exact_tolerance": None, "exact_check": why, "rel_err_vs_own_dense": None, "exact_errors": None}
    if why:
        return cols, None
    if spec.n > MASK_MAX_N:
        cols["exact_check"] = f"not computed: n = {spec.n} > {MASK_MAX_N} (the float64 reference needs the n x n mask)"
        return cols, None
    c = _Check(spec, core, qkv, beat, deadline)
    cols["exact_tolerance"] = c.tol
    try:
        mask = core.dense_mask(spec.n, spec.n, spec.causal)
        if tuple(mask.shape) != (spec.n, spec.n) or mask.dtype != torch.bool:
            return cols, f"dense_mask returned {mask.dtype} {tuple(mask.shape)}, not torch.bool ({spec.n}, {spec.n})"
        a, b = outputs if outputs is not None else (c.call(spec.causal), c.call(spec.causal))
        cols.update(c.forward(b, mask, reference))
        c.found.compare(
            "determinism", rel_err(a, b), determinism_tolerance(spec.dtype), "two calls on the same inputs differ"
        )
        c.padded(mask)
        c.other_masking()
        if spec.mode == "fwdbwd":
            _gradients(core, *c.one, mask, spec.causal, c.found, c.tol * GRAD_TOLERANCE_FACTOR, beat, deadline)
    except _Invalid as e:
        cols["exact_check"] = "failed"
        return cols, str(e)
    except ReferenceTimeout as e:
        cols.update(exact_check=f"not completed: {e}", exact_errors=c.found.figures or None)
        return cols, _problem(c.found)
    problem = _problem(c.found)
    cols.update(exact_errors=c.found.figures, exact_check="failed" if problem else "passed: " + ", ".join(c.found.done))
    return cols, problem


class _Check:
    """The comparisons of one exact point. The probes of other forms (padding, the other masking,
    gradients) run on the first head alone, with its key/value head: the forward compared every
    head; a head's work is what these calls cost."""

    def __init__(self, spec, core, qkv, beat, deadline):
        self.spec, self.core, self.beat, self.deadline = spec, core, beat, deadline
        self.q, self.k, self.v = qkv
        self.facts, self.tol = contract.facts(core), tolerance(spec.dtype)
        self.found = _Findings(spec.dtype)
        self.some = sample_rows(spec.n)
        self.one = (self.q[:, :1], self.k[:, :1], self.v[:, :1])

    def call(self, causal, key_padding_mask=None, qkv=None):
        qkv = qkv or (self.q, self.k, self.v)
        self.beat()
        with torch.no_grad():
            out = self.core(*qkv, causal=causal, key_padding_mask=key_padding_mask)
        problem = check_output(out, qkv[0], qkv[2], "output (exactness check)")
        if problem:
            raise _Invalid(problem)
        return out

    def reference(self, qkv, mask, rows, key_padding_mask=None):
        return reference_attention(*qkv, mask, key_padding_mask=key_padding_mask, rows=rows, deadline=self.deadline,
                                   tick=self.beat)  # fmt: skip

    def forward(self, out, mask, cache) -> dict:
        """The swept configuration: every row up to ALL_ROWS_MAX_N, sampled rows beyond."""
        n = self.spec.n
        rows = None if n <= ALL_ROWS_MAX_N else sample_rows(n)
        key = ("own", _fingerprint(mask), None if rows is None else len(rows))
        ref = cache(key, lambda: self.reference((self.q, self.k, self.v), mask, rows))
        got = out if rows is None else out.index_select(2, rows.to(out.device))
        self.found.compare(
            "forward", rel_err(got, ref), self.tol, "the output differs from its own dense_mask's pattern"
        )
        return {
            "rel_err_vs_own_dense": self.found.figures["forward"],
            "own_dense_rows": n if rows is None else len(rows),
        }

    def padded(self, mask) -> None:
        """A call with batch row 0's last third of keys padded, where the plugin takes padding."""
        n = self.spec.n
        if not self.facts.supports_padding or n < 3:
            return
        kpm = torch.zeros(self.q.shape[0], n, dtype=torch.bool, device=self.q.device)
        kpm[0, n - n // 3 :] = True
        out = self.call(self.spec.causal, kpm, self.one).index_select(2, self.some.to(self.q.device))
        want = self.reference(self.one, mask, self.some, kpm)
        self.found.compare(
            "padded", rel_err(out, want), self.tol, "with key padding, the output differs from its pattern"
        )

    def other_masking(self) -> None:
        """Causal in a bidirectional sweep, and the reverse, where the plugin computes both."""
        other, f = not self.spec.causal, self.facts
        if not (f.supports_causal if other else not f.causal_only):
            return
        out = self.call(other, None, self.one).index_select(2, self.some.to(self.q.device))
        want = self.reference(self.one, self.core.dense_mask(self.spec.n, self.spec.n, other), self.some)
        what = "causal" if other else "bidirectional"
        self.found.compare(
            what, rel_err(out, want), self.tol, f"the {what} output (not this row's) differs from its pattern"
        )


def _problem(found: _Findings) -> str | None:
    if not found.failures:
        return None
    return "not exact: " + "; ".join(found.failures)


def _gradients(core, q, k, v, mask, causal, found, tol, beat, deadline) -> None:
    """The plugin's gradients against the float64 reference's, for one upstream gradient that is
    nonzero on GRAD_ROWS sampled rows (so that the reference needs those rows only)."""
    n = q.shape[2]
    rows = sample_rows(n, GRAD_ROWS)
    g = torch.Generator().manual_seed(n)
    up = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    up[:, :, rows] = torch.randn(up.shape[0], up.shape[1], len(rows), up.shape[3], generator=g, dtype=torch.float64)
    up = up.to(q.device)
    ours = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    beat()
    out = core(*ours, causal=causal)
    problem = check_output(out, q, v, "output (gradient check)")
    if problem:
        raise _Invalid(problem)
    (out.double() * up).sum().backward()
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*exact, mask, rows=rows, deadline=deadline, tick=beat)
    (ref * up.index_select(2, rows.to(q.device))).sum().backward()
    for name, a, b in zip("qkv", ours, exact):
        if a.grad is None:
            found.failures.append(f"no gradient reached {name}")
            continue
        found.compare(f"gradient of {name}", rel_err(a.grad, b.grad), tol, f"the gradient of {name} differs")
