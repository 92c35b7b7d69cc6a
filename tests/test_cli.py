import pytest

import effattn


def test_version(run_cli):
    r = run_cli("--version")
    assert r.returncode == 0 and effattn.__version__ in r.stdout


def test_list_shows_builtins(run_cli):
    r = run_cli("list")
    assert r.returncode == 0, r.stderr
    for n in ("full", "naive", "masked"):
        assert f"\n{n} " in r.stdout
    assert "complexity" in r.stdout and "on cpu" in r.stdout
    # a terminal of 100 columns shows it whole: availability reasons go below the table
    assert max(len(line) for line in r.stdout.splitlines()) <= 100, r.stdout
    assert "\nxformers " in r.stdout and "* not available on cpu:\n  xformers: unavailable: needs CUDA" in r.stdout


def test_info(run_cli):
    r = run_cli("info")
    assert r.returncode == 0 and "torch" in r.stdout and "threads" in r.stdout


def test_check_passes(run_cli):
    r = run_cli("check", "full")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exact_vs_reference" in r.stdout and "0 failed" in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["check", "fulll"], "did you mean full"),
        (["check", "full:window=3"], "no option 'window'"),
        (["check", "full:window"], "must be KEY=VALUE"),
        (["check", "full", "--device", "cuda"], None),
        (["nosuchcommand"], "No such command"),
        (["list", "--bogus"], "No such option"),
    ],
)
def test_usage_errors_are_one_line_exit_2(run_cli, args, needle):
    import torch

    if args[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA present")
    r = run_cli(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("effattn: error:"), r.stderr
    assert "Traceback" not in r.stderr
    if needle:
        assert needle in lines[0]


def test_info_describes_every_plugin_with_its_facts():
    """`effattn info NAME` prints every fact, tuples of option dicts (small_options) included,
    for every registered plugin (it once raised a TypeError on small_options)."""
    from click.testing import CliRunner

    from effattn.cli import cli

    runner = CliRunner()
    for name in effattn.list_attention():
        r = runner.invoke(cli, ["info", name])
        assert r.exit_code == 0 and r.exception is None, (name, r.output[-500:], r.exception)
        assert "facts:" in r.output and "small_options" in r.output, (name, r.output[-500:])
