import pytest
import torch

import effattn
from effattn import registry
from effattn.errors import OptionError, UnknownAttentionError


def test_builtins_listed():
    names = effattn.list_attention()
    for n in ("full", "naive", "masked"):
        assert n in names


def test_wildcards():
    assert effattn.list_attention("fu*") == ["full"]
    assert effattn.list_attention("nothing*") == []


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownAttentionError, match="did you mean full"):
        effattn.create_attention("fulll")


def test_unknown_option_names_valid_ones():
    with pytest.raises(OptionError, match="valid options: none"):
        effattn.create_attention("full", window=3)


def test_register_conflict_and_same_object():
    class A(torch.nn.Module):
        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            return q

    class B(A):
        pass

    try:
        effattn.register_attention("zz_test_a")(A)
        effattn.register_attention("zz_test_a")(A)  # the very same object again: fine
        with pytest.raises(ValueError, match="already registered"):
            effattn.register_attention("zz_test_a")(B)
        with pytest.raises(ValueError, match="already registered"):
            effattn.register_attention("full")(B)
    finally:
        registry._REGISTRY.pop("zz_test_a", None)


def test_minimal_plugin_gets_default_facts():
    class Minimal(torch.nn.Module):
        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    f = effattn.Facts.of(Minimal)
    assert f.exact is False and f.supports_causal is False and f.complexity == "unknown"
    # and the suite passes it on what it claims (nothing beyond plain self-attention)
    from effattn.testing import check_attention

    check_attention(Minimal())


def test_factory_plugin_and_option_type_errors():
    def make(scale: float = 1.0):
        if scale <= 0:
            raise ValueError(f"option scale must be > 0, got {scale}")
        return effattn.create_attention("full")

    try:
        effattn.register_attention("zz_factory")(make)
        assert effattn.create_attention("zz_factory", scale=2.0) is not None
        with pytest.raises(OptionError, match="must be a number"):
            effattn.create_attention("zz_factory", scale="big")
        with pytest.raises(OptionError, match="must be > 0"):
            effattn.create_attention("zz_factory", scale=-1.0)
    finally:
        registry._REGISTRY.pop("zz_factory", None)


def test_bad_call_shapes_are_clear():
    a = effattn.create_attention("full")
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        a(q, q, q, key_padding_mask=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="batch, heads, seq, head_dim"):
        a(q[0], q[0], q[0])


def test_facts_are_normalised_and_a_probe_that_exits_is_a_reason():
    import sys

    from effattn.registry import Facts, PluginEntry

    class Odd(torch.nn.Module):
        devices = "cpu"
        dtypes = (torch.float32, torch.float64)

        @staticmethod
        def availability(device):
            sys.exit(3)

    f = Facts.of(Odd)
    assert f.devices == ("cpu",) and f.dtypes == ("float32", "float64")
    why = PluginEntry("odd", Odd, facts=f).availability("cpu")
    assert why.startswith("unavailable: availability check failed (SystemExit: 3)")


def test_a_factory_that_returns_no_module_is_refused(monkeypatch):
    from effattn import registry

    monkeypatch.setitem(registry._REGISTRY, "adv_none", registry.PluginEntry("adv_none", lambda: None))
    with pytest.raises(effattn.OptionError, match="returned a NoneType, not a torch.nn.Module"):
        effattn.create_attention("adv_none")


def test_lookalike_groups_include_a_case_apart(monkeypatch):
    from importlib import metadata

    from effattn import registry

    class EPs:
        groups = {"effattn.attention", "Effattn.Attention", "effattn.attentions", "console_scripts"}

    monkeypatch.setattr(metadata, "entry_points", lambda **kw: EPs())
    assert registry.lookalike_groups() == ["Effattn.Attention", "effattn.attentions"]


def test_an_entry_point_that_is_not_callable_is_broken_not_fatal(monkeypatch):
    from importlib import metadata

    from effattn import registry

    class EP:
        name, value, dist = "adv_int", "somewhere:NOT_CALLABLE", None

        def load(self):
            return 42

    registry._ensure_loaded()
    monkeypatch.setattr(metadata, "entry_points", lambda group=None, **kw: [EP()])
    monkeypatch.setattr(registry, "_BROKEN", dict(registry._BROKEN))
    registry.load_entry_points(force=True)
    assert "adv_int" not in registry._REGISTRY
    assert registry._BROKEN["adv_int"] == "somewhere:NOT_CALLABLE is a int, not a class or factory"


def test_a_nan_or_infinite_option_is_refused_whatever_its_range():
    from effattn.options import check_float

    for bad in (float("nan"), float("inf"), float("-inf")):
        for lo, hi, lo_open in ((0.0, None, False), (0.0, 1.0, False), (0.0, None, True), (-1e300, None, False)):
            with pytest.raises(OptionError, match="finite number"):
                check_float("x", bad, lo, hi, lo_open)
    with pytest.raises(OptionError, match="expand_k"):  # it overflowed in the width's arithmetic
        effattn.create_attention("gla", expand_k=float("inf"))
    assert check_float("x", 0.5, 0.0, 1.0) == 0.5
