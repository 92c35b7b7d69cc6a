"""The FLOPs approximate plugins state for their algorithm (`algorithm_flops`), checked against
torch's own count of the matmuls their forward runs, and how the bench uses them."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from effattn import contract
from effattn.registry import create_attention, get_entry, list_attention


def _small(name) -> dict:
    """The plugin's own small options (quick, and blocks that do not divide n = 300: the ragged
    last block is where a count goes wrong)."""
    return dict(next(iter(get_entry(name).facts.small_options), {}))


def _approximate_builtins() -> list[str]:
    out = []
    for name in list_attention():
        entry = get_entry(name)
        if entry.source != "builtin" or entry.facts.kind != "attention":
            continue  # (a mixer's FLOPs are checked in test_mixers.py: it is not called with q, k, v)
        attn = create_attention(name, **_small(name))
        if getattr(attn, "exact", False) or (attn.availability("cpu") if hasattr(attn, "availability") else None):
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("name", _approximate_builtins())
@pytest.mark.parametrize("causal", [False, True])
def test_stated_flops_match_torch_count(name, causal):
    """Every built-in approximate plugin states its forward's matmul FLOPs, and they are within 5%
    of what torch.utils.flop_counter counts when the forward runs (elementwise work is left out of
    both); with grouped-query heads where the plugin takes them."""
    attn = create_attention(name, **_small(name))
    assert callable(getattr(attn, "algorithm_flops", None)), f"{name} states no algorithm_flops"
    if causal and not attn.supports_causal:
        pytest.skip(f"{name} is not causal")
    if not causal and getattr(attn, "causal_only", False):
        pytest.skip(f"{name} computes only the causal form")
    B, H, n, D = 2, 4, 300, 16
    Kh = 2 if getattr(attn, "supports_gqa", False) else H
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, n, D, generator=g)
    k, v = torch.randn(B, Kh, n, D, generator=g), torch.randn(B, Kh, n, D, generator=g)
    with FlopCounterMode(display=False) as fc:
        attn(q, k, v, causal=causal)
    counted = fc.get_total_flops()
    stated = attn.algorithm_flops(B, H, Kh, n, n, D, causal)
    assert counted > 0
    assert abs(stated / counted - 1) < 0.05, f"{name}: stated {stated}, torch counted {counted}"


class _Counted:
    exact = False

    def __init__(self, value):
        self.value = value

    def algorithm_flops(self, *args):
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "many", None, True, RuntimeError("boom")])
def test_a_broken_count_is_no_count(bad):
    assert contract.algorithm_flops(_Counted(bad), 1, 8, 8, 64, 64, 64, False) is None
    assert contract.algorithm_flops(object(), 1, 8, 8, 64, 64, 64, False) is None
    assert contract.algorithm_flops(_Counted(10**9), 1, 8, 8, 64, 64, 64, False) == 10**9


def test_bench_rows_carry_the_basis(tmp_path, run_cli):
    """An approximate row gets its algorithm's FLOPs (x3 under fwdbwd) and a FLOP rate; an exact
    row keeps the pairs count."""
    out = tmp_path / "r.jsonl"
    for mode in ("fwd", "fwdbwd"):
        res = run_cli(
            "bench",
            "--seq-lens",
            "128",
            "--attn",
            "full,linear",
            "--mode",
            mode,
            "--min-run-time",
            "0.01",
            "--no-error",
            "--out",
            str(out),
            "--overwrite",
            "--heads",
            "2",
            "--head-dim",
            "16",
        )
        assert res.returncode == 0, res.stderr
        rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines()) if "variant" in r}
        lin, full = rows["linear"], rows["full"]
        assert full["flops_basis"] == "pairs" and lin["flops_basis"] == "algorithm"
        stated = create_attention("linear").algorithm_flops(1, 2, 2, 128, 128, 16, False)
        assert lin["flops"] == pytest.approx(stated * (3 if mode == "fwdbwd" else 1))
        assert (
            lin["gflops"]
            and lin["peak_fraction"]
            and lin["gflops"] == pytest.approx(lin["flops"] / lin["time_ms"] * 1e-6)
        )
