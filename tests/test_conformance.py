"""Every registered plugin, parametrized over the registry: a new plugin is tested for free.
Plugins with block or window options are also checked at small sizes, so that the patterns are
really exercised at the short lengths the suite uses."""

import pytest
import torch

import effattn
from effattn.testing import check_attention, reference_attention, run_checks

# Small option sets so that the patterns are non-trivial at n <= 77.
SMALL_OPTIONS = {
    "sliding_window": [dict(window=5), dict(window=4, global_tokens=3), dict(window=0)],
    "bigbird": [
        dict(block_size=8, num_random_blocks=2),
        dict(block_size=5, num_random_blocks=1, seed=3),
        dict(block_size=16, num_random_blocks=0),
    ],
    "sparse": [
        dict(pattern="strided", stride=6),
        dict(pattern="fixed", stride=8, summary=2),
        dict(pattern="fixed", stride=5, summary=1),
    ],
    "performer": [dict(num_features=32)],
    "linformer": [dict(proj_len=16, max_len=128)],
    "nystrom": [dict(num_landmarks=8)],
}


def _cases():
    for name in effattn.list_attention():
        entry = effattn.get_entry(name)
        if entry.source != "builtin":
            continue
        marks = [] if entry.availability("cpu") is None else [pytest.mark.skip(reason=entry.availability("cpu"))]
        yield pytest.param(name, {}, id=name, marks=marks)
        for i, opts in enumerate(SMALL_OPTIONS.get(name, [])):
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
