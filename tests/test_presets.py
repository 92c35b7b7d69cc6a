"""Named sweeps: each preset is valid, runs from the CLI at a tiny scale, and its rows say which
preset (and which overrides) made them."""

from __future__ import annotations

import json

import pytest

from effattn.presets import PRESETS, get_preset

# every preset shrunk to seconds: the options given beside --preset override it
TINY = {
    "lra-speed": ["--seq-lens", "64", "--min-run-time", "0.01", "--heads", "2", "--head-dim", "8", "--layers", "1",
                  "--batch", "1"],
    "all-builtins": ["--seq-lens", "32", "--attn", "full,nsa", "--min-run-time", "0.01", "--heads", "2",
                     "--head-dim", "8"],
    "long-context": ["--seq-lens", "32", "--attn", "full,sliding_window_sinks:window=4", "--min-run-time", "0.01"],
    "mqar-zoology": ["--seq-lens", "32", "--steps", "3", "--seeds", "1", "--d-model", "16", "--attn", "full,linear"],
    "mqar-capacity": ["--seq-lens", "48", "--steps", "3", "--seeds", "1", "--d-model", "16"],
    "peers": ["--seq-lens", "64", "--attn", "full,local_attention:window=16,hf_longformer:window=16",
              "--min-run-time", "0.01", "--heads", "2", "--head-dim", "8"],
    "decode": ["--seq-lens", "32", "--min-run-time", "0.01", "--heads", "2", "--head-dim", "8"],
}  # fmt: skip


def test_every_preset_is_listed_and_valid():
    from effattn.cli.bench import bench
    from effattn.spec import parse_seq_lens, parse_variants

    names = {p.name for p in bench.params}
    assert set(TINY) == set(PRESETS), "a new preset needs its tiny form here"
    for p in PRESETS.values():
        assert p.summary and "\n" not in p.summary and p.version >= 1
        assert set(p.options) <= names, set(p.options) - names
        parse_variants(p.options["attn"])  # builds every variant: a bad option fails here
        if "seq_lens" in p.options:
            parse_seq_lens(p.options["seq_lens"])


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_runs_tiny_and_its_rows_record_it(run_cli, tmp_path, name):
    out = tmp_path / "p.jsonl"
    r = run_cli("bench", "--preset", name, *TINY[name], "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    assert rows
    p = get_preset(name)
    for row in rows:
        assert row["preset"] == name and row["preset_version"] == p.version
        assert row["preset_options"] == json.loads(json.dumps(p.options))
        assert set(row["preset_overrides"]) >= {"seq_lens", "out_path"}
    if "mode" in p.options:
        assert {row.get("mode") for row in rows} == {p.options["mode"]}
    if name == "lra-speed":  # the preset's level, shape and mode, with the overrides on top
        assert {(x["level"], x["mode"], x["layers"], x["heads"]) for x in rows} == {("model", "fwdbwd", 1, 2)}
        assert {x["status"] for x in rows} == {"ok"}, [(x["label"], x["reason"]) for x in rows]


def test_presets_command_and_bad_preset_requests(run_cli):
    r = run_cli("presets")
    assert r.returncode == 0
    for p in PRESETS.values():
        assert f"{p.name}@{p.version}" in r.stdout
    one = run_cli("presets", "lra-speed")
    assert one.returncode == 0 and "--layers 4" in one.stdout and "Tay et al. 2021" in one.stdout
    for args, msg in (
        (["presets", "nope"], "unknown preset 'nope'; presets: lra-speed"),
        (["bench", "--preset", "nope"], "unknown preset 'nope'"),
        (["bench", "--preset", ""], "--preset is empty"),
        (["bench", "--preset", "lra-speed", "--steps", "3"], "--steps cannot be used here"),
        (["bench", "--preset", "decode", "--level", "layer", "--layers", "3"], "applies to level 'model'"),
    ):
        bad = run_cli(*args)
        assert bad.returncode == 2 and msg in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)


def test_the_reproduction_scripts_run_on_tiny_inputs(run_cli, tmp_path):
    """The scripts that print a paper's figures beside ours run end to end (tiny settings)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "lra.jsonl"
    r = run_cli("bench", "--preset", "lra-speed", *TINY["lra-speed"][2:], "--seq-lens", "64,128", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    lra = subprocess.run([sys.executable, str(root / "benchmarks" / "reproduce_lra_speed.py"), str(out)],
                         capture_output=True, text=True, cwd=root)  # fmt: skip
    assert lra.returncode == 0, lra.stderr
    assert "speed-up over the Transformer at n = 128" in lra.stdout and "performer" in lra.stdout
    mse = subprocess.run([sys.executable, str(root / "benchmarks" / "reproduce_performer_mse.py"), "--draws", "3"],
                         capture_output=True, text=True, cwd=root)  # fmt: skip
    assert mse.returncode == 0, mse.stderr
    assert "orthogonal / iid MSE" in mse.stdout and mse.stdout.count("iid") >= 9
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "reproduce_performer_mse.py"), "--draws", "1"],
                         capture_output=True, text=True, cwd=root)  # fmt: skip
    assert bad.returncode == 2 and "--draws must be >= 2" in bad.stderr
