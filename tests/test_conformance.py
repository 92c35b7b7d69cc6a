"""Every registered plugin, parametrized over the registry: a new plugin is tested for free.
Each plugin is also checked with the option sets it declares for short lengths (its
`small_options`), so that its pattern is really exercised at the lengths the suite uses."""

import pytest
import torch

import effattn
from effattn.testing import check_attention, reference_attention, run_checks

FLEX_ON_CPU = (
    "FlexAttention has no backward on CPU and compiles for seconds per shape: its forward is checked "
    "against the named plugin in tests/test_peers.py; benchmarks/gpu_check.py runs the suite on CUDA"
)


def _cases():
    for name in effattn.list_attention():
        entry = effattn.get_entry(name)
        if entry.source != "builtin":
            continue
        marks = [] if entry.availability("cpu") is None else [pytest.mark.skip(reason=entry.availability("cpu"))]
        if name == "flex":  # the suite's gradient checks need a backward, which CPU FlexAttention lacks
            marks = [pytest.mark.skip(reason=FLEX_ON_CPU)]
        yield pytest.param(name, {}, id=name, marks=marks)
        for i, opts in enumerate(entry.facts.small_options):
            yield pytest.param(name, opts, id=f"{name}-small{i}", marks=marks)


@pytest.mark.parametrize("name,options", list(_cases()))
def test_conformance(name, options):
    check_attention(name, **options)


def test_suite_catches_a_wrong_plugin():
    """The suite must fail a plugin that claims exactness but computes something else."""

    class Wrong(torch.nn.Module):
        exact = True
        supports_causal = True

        def dense_mask(self, n_q, n_k, causal=False):
            return torch.ones(n_q, n_k, dtype=torch.bool).tril() if causal else torch.ones(n_q, n_k, dtype=torch.bool)

        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)  # ignores causal

    results = {r.name: r for r in run_checks(Wrong())}
    assert not results["exact_vs_reference"].passed
    assert not results["causal_no_future_leak"].passed
    with pytest.raises(AssertionError, match="causal_no_future_leak"):
        check_attention(Wrong())


def test_reference_zero_rows():
    q = torch.randn(1, 1, 3, 4)
    allowed = torch.zeros(3, 3, dtype=torch.bool)
    assert reference_attention(q, q, q, allowed).abs().max() == 0


class _Window(torch.nn.Module):
    """A banded window of +-window keys, computed densely. `claim` decides what dense_mask says."""

    exact = True
    supports_causal = True
    supports_padding = True

    def __init__(self, window: int = 128, claim: str = "band", raise_in_forward: bool = False,
                 pad_row_nonzero: bool = False):  # fmt: skip
        super().__init__()
        self.window, self.claim, self.raise_in_forward, self.pad_row_nonzero = (
            window, claim, raise_in_forward, pad_row_nonzero)  # fmt: skip

    def dense_mask(self, n_q, n_k, causal=False):
        i, j = torch.arange(n_q)[:, None], torch.arange(n_k)[None, :]
        m = (i - j).abs() <= self.window if self.claim == "band" else torch.ones(n_q, n_k, dtype=torch.bool)
        return m & (j <= i) if causal else m

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        assert not self.raise_in_forward, "my own invariant broke"
        i, j = torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]
        allowed = (i - j).abs() <= self.window
        if causal:
            allowed = allowed & (j <= i)
        if key_padding_mask is not None:
            allowed = allowed & ~key_padding_mask[:, None, None, :]
        out = reference_attention(q, k, v, allowed).to(q.dtype)
        if self.pad_row_nonzero and key_padding_mask is not None:
            out = out + key_padding_mask.all(-1).to(q.dtype)[:, None, None, None]
        return out


def test_a_wrong_dense_mask_at_default_options_is_caught():
    """The window (128) is wider than the old check lengths (<= 77): a dense_mask that claims
    full attention passed there. The suite now grows n until the pattern shows."""
    results = {r.name: r for r in run_checks(_Window(claim="full"))}
    assert results["exact_vs_reference"].status == "failed", results["exact_vs_reference"]
    assert "n_q=155 n_k=155" in results["exact_vs_reference"].detail
    assert results["pattern_exercised"].status == "skipped"
    assert (
        "never exercised" in results["pattern_exercised"].detail and "window=16" in results["pattern_exercised"].detail
    )
    right = {r.name: r for r in run_checks(_Window())}
    undeclared = {"grouped_query_heads", "decode_matches_causal_forward"}  # _Window declares neither
    assert all(r.status == ("skipped" if n in undeclared else "passed") for n, r in right.items()), right
    assert "excludes pairs from n=155" in right["pattern_exercised"].detail


def test_every_failing_case_is_listed_and_counts_are_apart(run_cli):
    r = {x.name: x for x in run_checks(_Window(claim="full"))}["exact_vs_reference"]
    cases = r.detail.splitlines()
    # not only the first: 8 shown, the rest counted
    assert len(cases) == 9 and all("relative error" in c for c in cases[:8]), cases
    assert cases[-1].startswith("... and ") and cases[-1].endswith(" more failing cases"), cases
    with pytest.raises(AssertionError, match=r"passed, 1 failed, 3 skipped\nexact_vs_reference: "):
        check_attention(_Window(claim="full"))
    out = run_cli("check", "linear")
    assert out.returncode == 0 and "linear: 8 passed, 0 failed, 2 skipped" in out.stdout, out.stdout


def test_failures_say_what_to_fix():
    r = {x.name: x for x in run_checks(_Window(pad_row_nonzero=True))}
    detail = r["finite_outputs_and_gradients"].detail
    assert "batch row 1 is fully padded" in detail and "must be zeros" in detail, detail
    r = {x.name: x for x in run_checks(_Window(raise_in_forward=True))}
    assert "the plugin raised AssertionError: my own invariant broke" in r["exact_vs_reference"].detail
    assert "the plugin raised AssertionError" in r["shape_and_dtype"].detail


def test_each_check_is_a_named_function_and_runs_alone():
    from effattn.testing import CHECKS

    names = [n for n, _ in CHECKS]
    assert names[:2] == ["shape_and_dtype", "finite_outputs_and_gradients"] and len(set(names)) == len(names)
    (only,) = run_checks("full", only="deterministic")
    assert only.name == "deterministic" and only.status == "passed"
    with pytest.raises(ValueError, match="no check named 'nope'"):
        run_checks("full", only="nope")


def test_the_pytest_helper_runs_each_check_as_a_test():
    from effattn.testing import conformance_tests

    test = conformance_tests("sliding_window", window=4)
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    assert list(mark.args[1]) == [n for n, _ in __import__("effattn.testing").testing.CHECKS]
    for name in mark.args[1]:
        test(name)  # passes
    wrong = conformance_tests(_Window(claim="full"))
    with pytest.raises(AssertionError, match="exact_vs_reference"):
        wrong("exact_vs_reference")
    with pytest.raises(pytest.skip.Exception, match="never exercised"):
        wrong("pattern_exercised")


class _DetachedLeak(torch.nn.Module):
    """Linear attention whose key features are divided by a detached maximum over all keys plus
    an eps, as FAVOR+ implementations do: no gradient reaches a later (or padded) key, but its
    value moves earlier outputs."""

    supports_causal = True
    supports_padding = True

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        scale = fk.detach().amax((-1, -2), keepdim=True)  # over every key, padded and later ones too
        fk = fk / scale
        if key_padding_mask is not None:
            fk = fk * (~key_padding_mask)[:, None, :, None]
        scores = fq @ fk.transpose(-1, -2)
        if causal:
            scores = scores.tril()
        return (scores @ v) / (scores.sum(-1, keepdim=True) + 0.5)


def test_a_leak_through_a_detached_statistic_is_caught():
    """The gradient checks cannot see it; the value checks (new values after position t, or at
    padded positions, must leave the outputs unchanged) do."""
    r = {x.name: x for x in run_checks(_DetachedLeak())}
    assert r["causal_no_future_leak"].status == "failed", r["causal_no_future_leak"]
    assert "changing q, k and v after position" in r["causal_no_future_leak"].detail
    assert (
        r["padding_no_leak"].status == "failed" and "changing the padded keys and values" in r["padding_no_leak"].detail
    )


def test_a_declared_dtype_is_run_and_must_stay_finite():
    class Fp16Overflow(torch.nn.Module):
        dtypes = ("float32", "float16")

        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return out * 1e5 * 1e5 if out.dtype == torch.float16 else out  # inf in float16 only

    r = {x.name: x for x in run_checks(Fp16Overflow())}
    assert r["shape_and_dtype"].status == "failed" and "float16: non-finite output" in r["shape_and_dtype"].detail


class _Plain(torch.nn.Module):
    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_a_plugin_that_cannot_be_built_fails_by_name(monkeypatch):
    from effattn import registry

    class Broken(torch.nn.Module):
        def __init__(self):
            raise RuntimeError("cuda lib missing")

    def returns_none():
        return None

    for name, target, why in (("adv_init", Broken, "RuntimeError: cuda lib missing"),
                              ("adv_none", returns_none, "not a torch.nn.Module")):  # fmt: skip
        monkeypatch.setitem(registry._REGISTRY, name, registry.PluginEntry(name, target))
        results = run_checks(name)
        assert results[0].name == "build" and results[0].status == "failed" and why in results[0].detail, results
        assert all(r.status == "skipped" for r in results[1:]) and len(results) == 1 + len(
            __import__("effattn.testing").testing.CHECKS
        )


def test_garbage_outputs_are_named_for_what_they_are():
    class Tuple(_Plain):
        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            return (q,)

    r = {x.name: x for x in run_checks(Tuple())}
    assert "forward returned tuple, not a tensor" in r["shape_and_dtype"].detail, r["shape_and_dtype"]

    class Nan(_Plain):
        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            return q * float("nan")

    r = {x.name: x for x in run_checks(Nan())}
    assert r["deterministic"].detail.startswith("non-finite output"), r["deterministic"]


def test_a_broken_dense_mask_fails_pattern_exercised():
    class BadMask(_Window):
        def dense_mask(self, n_q, n_k, causal=False):
            raise RuntimeError("no mask today")

    r = {x.name: x for x in run_checks(BadMask())}
    assert (
        r["pattern_exercised"].status == "failed"
        and "dense_mask(1, 1) raised RuntimeError" in r["pattern_exercised"].detail
    )

    class ListMask(_Window):
        def dense_mask(self, n_q, n_k, causal=False):
            return [[True]]

    r = {x.name: x for x in run_checks(ListMask())}
    assert "returned list, want a torch.bool (1, 1) tensor" in r["pattern_exercised"].detail


def test_lengths_the_plugin_refuses_are_left_out_and_said():
    class Short(_Window):
        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            if q.shape[-2] > 300:
                raise effattn.UnsupportedError("max length 300")
            return super().forward(q, k, v, causal, key_padding_mask)

    r = {x.name: x for x in run_checks(Short(window=400))}
    assert all(x.status != "failed" for x in r.values()), r
    assert "the plugin refused n >= 311: max length 300" in r["pattern_exercised"].detail
    assert "up to 155" in r["pattern_exercised"].detail


def test_a_plugin_that_changes_the_process_or_its_inputs_fails_and_is_undone():
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()

    class Meddler(_Plain):
        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            torch.set_num_threads(1)
            torch.set_float32_matmul_precision("medium")
            with torch.no_grad():
                q.mul_(2)
            return super().forward(q, k, v)

    r = {x.name: x for x in run_checks(Meddler())}
    detail = r["leaves_inputs_and_process_alone"].detail
    assert "changed torch's thread count" in detail and "float32 matmul precision" in detail, detail
    assert "modified q in place" in detail and "(undone)" in detail
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, precision)
    assert {x.name: x for x in run_checks("full")}["leaves_inputs_and_process_alone"].status == "passed"


def test_each_result_is_told_as_its_check_ends():
    told = []
    results = run_checks("full", on_result=told.append)
    assert told == results and [r.name for r in told] == [n for n, _ in __import__("effattn.testing").testing.CHECKS]

    class Broken(torch.nn.Module):
        def __init__(self):
            raise RuntimeError("nope")

    told = []
    from effattn import registry

    registry._REGISTRY["adv_told"] = registry.PluginEntry("adv_told", Broken)
    try:
        results = run_checks("adv_told", on_result=told.append)
    finally:
        del registry._REGISTRY["adv_told"]
    assert told == results and told[0].name == "build"


def test_absurd_check_lengths_are_refused(cli_here):
    for bad in ((), (0,), (5000,), ("7",), (True,), 77):
        with pytest.raises(ValueError, match="give lengths from 1 to 4096"):
            run_checks("full", seq_lens=bad)
    code, _, err = cli_here("check", "full", "--seq-lens", "99999999")
    assert code == 2 and "at most 4096" in err and len(err.strip().splitlines()) == 1


class _CausalOnly(torch.nn.Module):
    """A gated running mean over the unpadded j <= i that declares `causal_only`; `refuse=False`
    computes the causal form for causal=False too, instead of refusing it."""

    supports_causal = True
    supports_padding = True
    causal_only = True

    def __init__(self, refuse: bool = True):
        super().__init__()
        self.refuse = refuse

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if not causal and self.refuse:
            raise effattn.UnsupportedError("causal only")
        keep = torch.ones(v.shape[:3], dtype=v.dtype)
        if key_padding_mask is not None:
            keep = keep * (~key_padding_mask)[:, None].to(v.dtype)
        w = keep[..., None] * torch.sigmoid(k)
        return torch.sigmoid(q) * (w * v).cumsum(2) / (w.cumsum(2) + 1)


def test_a_causal_only_plugin_is_checked_in_the_causal_form_and_must_refuse_the_other():
    r = {x.name: x for x in run_checks(_CausalOnly())}
    assert all(x.status != "failed" for x in r.values()), r
    assert r["padding_no_leak"].status == "passed" and r["deterministic"].status == "passed"
    assert r["finite_outputs_and_gradients"].detail == "4 cases"  # 3 causal lengths, and causal padded
    r = {x.name: x for x in run_checks(_CausalOnly(refuse=False))}
    assert r["shape_and_dtype"].status == "failed"
    assert "declares causal_only but computed causal=False" in r["shape_and_dtype"].detail
