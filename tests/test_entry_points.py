"""A plugin from a separately installed package, found through the `effattn.attention` entry point."""

import pytest

import effattn
from effattn.testing import check_attention


def test_third_party_plugin_registered_and_conformant(with_plugins):
    assert "demo_window" in effattn.list_attention()
    entry = effattn.get_entry("demo_window")
    assert entry.source.startswith("entry point (effattn-demo-good")
    check_attention("demo_window", k=3)


def test_broken_plugin_is_listed_not_fatal(with_plugins):
    broken = effattn.broken_plugins()
    assert "demo_broken" in broken and "a_library_that_is_not_installed" in broken["demo_broken"]
    assert "full" in effattn.list_attention()  # everything else keeps working
    with pytest.raises(effattn.UnknownAttentionError, match="broken"):
        effattn.create_attention("demo_broken")


def test_cli_list_and_check_third_party(plugin_site, run_cli):
    env = {"PYTHONPATH": str(plugin_site)}
    r = run_cli("list", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert "demo_window" in r.stdout and "entry point (effattn-demo-good)" in r.stdout
    assert "broken plugins:" in r.stdout and "demo_broken" in r.stdout
    # its options with their defaults and its description, for a plugin nobody documented for us
    assert "demo_window" in r.stdout.split("what each computes", 1)[1] and "options: k=4" in r.stdout
    # a lookalike entry-point group is a warning, not silence
    assert "entry-point group 'effattn.attentions' (demo_typo) is not 'effattn.attention'" in r.stderr, r.stderr
    assert "demo_typo" not in r.stdout
    r = run_cli("check", "demo_window:k=2", env_extra=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout
    r = run_cli("info", "demo_window", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert "k                 int      default 4" in r.stdout and "supports_causal   True" in r.stdout
    assert "from: effattn-demo-good 0.1.0" in r.stdout and "wraps: einops " in r.stdout, r.stdout


def test_rows_record_the_distribution_that_provided_the_plugin(with_plugins):
    from importlib.metadata import version

    from effattn.bench.spec import SweepSpec, base_row
    from effattn.spec import Variant

    spec = SweepSpec(seq_lens=[16], variants=[Variant("full", {})])
    row = base_row(spec, Variant("demo_window", {"k": 3}), 16)
    assert (row["plugin_dist"], row["plugin_version"]) == ("effattn-demo-good", "0.1.0")
    assert row["plugin_wraps"] == {"einops": version("einops")}
    row = base_row(spec, Variant("full", {}), 16)
    assert (row["plugin_dist"], row["plugin_version"], row["plugin_wraps"]) == ("effattn", effattn.__version__, None)
