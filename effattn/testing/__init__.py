"""The conformance suite every plugin goes through.

    from effattn.testing import check_attention, conformance_tests
    check_attention("my_window", w=3)            # raises AssertionError naming every failed check
    test_my_window = conformance_tests("my_window", w=3)   # in a plugin's own tests: one pytest
                                                           # test per check, skips shown as skips

`run_checks` returns every check's outcome instead (`effattn check` prints them). Each check is a
named function in CHECKS, run in that order; a new check is one more function with the `@check`
decorator. What is checked depends on what the plugin declares (`effattn.registry.Facts`): shape
and dtype, finite outputs and gradients, exactness against a float64 dense reference built from
`dense_mask` (exact plugins; forward and gradients, causal, padding, cross, and lengths that are
no multiple of any block), no leak from the future (causal) or from padding, and determinism.

The suite is `suite` (what a check sees, how one is registered), `checks` and `decoding_checks`
(the checks, in the order they run); this module runs them.

The lengths come from the plugin's own pattern: past the lengths asked for, n doubles (up to
PATTERN_BOUND) until `dense_mask` excludes a pair, and exactness is checked at every length tried,
so a wrong mask cannot hide behind a window wider than the inputs. Where the pattern attends
every pair up to the bound, `pattern_exercised` is skipped and says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import contract
from ..errors import UnsupportedError
from ..guard import TorchState
from ..reference import reference_attention
from ..registry import Facts, create_attention
from . import checks, decoding_checks  # noqa: F401 - importing them registers the checks, in order
from .mixer_checks import MIXER_CHECKS, run_mixer_checks
from .suite import CHECKS, EXACT_RTOL, MAX_CHECK_LEN, PATTERN_BOUND, CheckResult, PluginRaised, Skip, Suite, check

__all__ = ["CHECKS", "EXACT_RTOL", "CheckResult", "Skip", "Suite", "check", "check_attention", "conformance_tests",
           "reference_attention", "run_checks", "summarize"]  # fmt: skip


def _mask_problem(mask, n: int) -> str | None:
    """Why dense_mask(n, n) cannot be used, or None."""
    try:
        m = mask(n, n, causal=False)
    except Exception as e:  # noqa: BLE001 - reported by pattern_exercised, by name
        return f"dense_mask({n}, {n}) raised {type(e).__name__}: {e}"
    if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (n, n):
        got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
        return f"dense_mask({n}, {n}) returned {got}, want a torch.bool ({n}, {n}) tensor"
    return None


def _sparse_from(attn, facts: Facts, seq_lens) -> tuple[tuple[int, ...], int | None, str | None]:
    """The lengths to check, the first at which the plugin's dense_mask excludes a pair, and what
    was wrong with dense_mask if anything: the asked lengths, then 2n + 1 from the longest, up
    to PATTERN_BOUND, until one excludes a pair."""
    lens = sorted(set(seq_lens))
    mask = getattr(attn, "dense_mask", None)
    if not facts.exact or mask is None:
        return tuple(lens), None, None
    if not callable(mask):
        return tuple(lens), None, f"dense_mask is a {type(mask).__name__}, not a method"

    def sparse(n):
        problem = _mask_problem(mask, n)
        if problem:
            raise ValueError(problem)
        return not bool(mask(n, n, causal=False).all())

    try:
        for n in lens:
            if sparse(n):
                return tuple(lens), n, None
        n = lens[-1]
        while n < PATTERN_BOUND:
            n = min(2 * n + 1, PATTERN_BOUND)
            lens.append(n)
            if sparse(n):
                return tuple(lens), n, None
    except ValueError as e:
        return tuple(sorted(set(seq_lens))), None, str(e)
    return tuple(lens), None, None


def _accepted(attn, lens: tuple[int, ...], asked, device) -> tuple[tuple[int, ...], str | None]:
    """Drop the lengths the search added that the plugin refuses (UnsupportedError: a maximum
    length, say), longest first; say which and why."""

    added = [n for n in lens if n not in set(asked)]
    refused = None
    for n in sorted(added, reverse=True):
        q = torch.zeros(1, 1, n, 4, device=device)
        try:
            attn(q, q, q, **({"causal": True} if contract.facts(attn).causal_only else {}))
        except UnsupportedError as e:
            refused = f"the plugin refused n >= {n}: {e}"
            lens = tuple(m for m in lens if m < n)
            continue
        except Exception:  # noqa: BLE001 - any other failure is the checks' to report
            pass
        break
    return lens, refused


def _suite(name_or_module, seq_lens, batch, heads, head_dim, device, seed, options) -> Suite:
    if isinstance(name_or_module, str):

        def build():
            return create_attention(name_or_module, **options)
    else:
        module = name_or_module

        def build():
            return module

    torch.manual_seed(seed)
    first = build()
    if not isinstance(first, torch.nn.Module):
        raise TypeError(f"the plugin is a {type(first).__name__}, not a torch.nn.Module")
    first = first.to(device)
    facts = Facts.of(first)
    lens, sparse_from, problem = _sparse_from(first, facts, seq_lens)
    lens, refused = _accepted(first, lens, seq_lens, device)
    if sparse_from is not None and sparse_from not in lens:
        sparse_from = None
    return Suite(build, isinstance(name_or_module, str), facts, device, batch, heads, head_dim, seed, lens,
                 sparse_from, problem, refused)  # fmt: skip


def run_checks(
    name_or_module,
    *,
    seq_lens=(1, 23, 77),
    batch: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    device: str = "cpu",
    seed: int = 0,
    only: str | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    **options,
) -> list[CheckResult]:
    """Run every check (or only the one named `only`) and return the results; never raises for
    a failed check. `seq_lens` are the first lengths; the pattern search may add longer ones.
    `on_result` is told each result as soon as its check ends (the CLI prints it then)."""
    kind = _kind(name_or_module)
    names = [n for n, _ in (MIXER_CHECKS if kind == "mixer" else CHECKS)]
    lens = list(seq_lens) if isinstance(seq_lens, (list, tuple)) else None
    if not lens or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHECK_LEN for n in lens):
        raise ValueError(
            f"seq_lens {seq_lens!r}: give lengths from 1 to {MAX_CHECK_LEN} (the checks build a dense float64 "
            "reference, n x n)"
        )
    if only is not None and only not in names:
        raise ValueError(f"no check named {only!r}; the checks are {', '.join(names)}")
    if kind == "mixer":
        return _mixer_checks(name_or_module, seq_lens, batch, device, seed, only, on_result, options)
    try:
        suite = _suite(name_or_module, seq_lens, batch, heads, head_dim, device, seed, options)
    except Exception as e:  # noqa: BLE001 - a plugin that cannot be built fails, by name, never crashes the suite
        why = f"the plugin could not be built: {type(e).__name__}: {e}"
        results = [CheckResult("build", False, why)] + [
            CheckResult(name, True, "not run: the plugin could not be built", skipped=True)
            for name in names
            if only is None or name == only
        ]
        for r in results if on_result else ():
            on_result(r)
        return results
    results = []
    for name, fn in CHECKS:
        if only is not None and name != only:
            continue
        guard = TorchState()  # what a check's calls change in the process is undone after it
        try:
            detail = fn(suite)
        except Skip as e:
            results.append(CheckResult(name, True, str(e), skipped=True))
        except (AssertionError, PluginRaised) as e:
            results.append(CheckResult(name, False, str(e)))
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, reported by name
            results.append(CheckResult(name, False, f"the plugin raised {type(e).__name__}: {e}"))
        else:
            results.append(CheckResult(name, True, detail or ""))
        finally:
            guard.restore()  # (leaves_inputs_and_process_alone reports it; the others only undo it)
        if on_result:
            on_result(results[-1])
    return results


def _kind(name_or_module) -> str:
    """ "mixer" or "attention": from the registry for a name, from the class for a module."""
    from ..registry import get_entry

    if isinstance(name_or_module, str):
        return get_entry(name_or_module).facts.kind
    return getattr(name_or_module, "kind", "attention")


def _mixer_checks(name_or_module, seq_lens, batch, device, seed, only, on_result, options):
    """The mixer suite (effattn.testing.mixer_checks); a mixer that cannot be built fails `build`."""
    if isinstance(name_or_module, str):

        def build():
            return create_attention(name_or_module, **options)
    else:

        def build():
            return name_or_module

    try:
        torch.manual_seed(seed)
        build()
    except Exception as e:  # noqa: BLE001 - reported by name, as for attention plugins
        r = [CheckResult("build", False, f"the mixer could not be built: {type(e).__name__}: {e}")]
        for x in r if on_result else ():
            on_result(x)
        return r
    return run_mixer_checks(build, isinstance(name_or_module, str), seq_lens=seq_lens, batch=batch, device=device,
                            seed=seed, only=only, on_result=on_result)  # fmt: skip


def summarize(results: list[CheckResult]) -> str:
    """`5 passed, 1 failed, 2 skipped`."""
    count = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
    return f"{count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped"


def check_attention(name_or_module, **kwargs) -> list[CheckResult]:
    """Run the suite; raise AssertionError naming every failed check and its failing cases.
    Returns the results."""
    results = run_checks(name_or_module, **kwargs)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise AssertionError(
            f"{summarize(results)}\n" + "\n".join(f"{r.name}: " + r.detail.replace("\n", "\n    ") for r in failed)
        )
    return results


def conformance_tests(name_or_module, **kwargs):
    """A pytest test function, parametrized over the checks, for a plugin package's own tests:

        test_my_window = conformance_tests("my_window", w=3)

    Each check is its own test; one that does not apply is a pytest skip with its reason."""
    import pytest

    checks_of_kind = MIXER_CHECKS if _kind(name_or_module) == "mixer" else CHECKS

    @pytest.mark.parametrize("check_name", [n for n, _ in checks_of_kind])
    def test_conformance(check_name):
        (r,) = run_checks(name_or_module, only=check_name, **kwargs)
        if r.skipped:
            pytest.skip(r.detail)
        assert r.passed, f"{r.name}: {r.detail}"

    return test_conformance
