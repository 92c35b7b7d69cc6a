"""`effattn new-plugin`: generate, install, list, test; the generated plugin fails the suite until
its forward is written, then passes."""

import os
import subprocess
import sys

import pytest

FORWARD = """        allowed = self.dense_mask(q.shape[-2], k.shape[-2], causal).to(q.device)
        if key_padding_mask is not None:
            allowed = allowed & ~key_padding_mask[:, None, None, :]
        has_key = allowed.any(-1, keepdim=True)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~has_key)
        return out * has_key
"""


def _install(pkg, site):
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--disable-pip-version-check", "--upgrade", "--target", str(site), str(pkg)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)


def _pytest(pkg, site):
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                          capture_output=True, text=True, env=env, cwd=pkg, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_scaffold_round_trip(tmp_path, run_cli):
    r = run_cli("new-plugin", "my_window", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    pkg = tmp_path / "effattn-my-window"
    assert f"wrote {pkg}/" in r.stdout
    site = tmp_path / "site"
    _install(pkg, site)
    listed = run_cli("list", "my_window", env_extra={"PYTHONPATH": str(site)})
    assert "my_window" in listed.stdout and "entry point (effattn-my-window)" in listed.stdout, listed.stdout
    assert "options: window=16" in listed.stdout

    # as generated, forward is not written: the suite fails (it does not pass by doing nothing)
    t = _pytest(pkg, site)
    assert t.returncode == 1 and "NotImplementedError: write MyWindowAttention.forward" in t.stdout, t.stdout[-3000:]
    assert " failed" in t.stdout.splitlines()[-1]

    module = pkg / "effattn_my_window" / "__init__.py"
    text = module.read_text()
    module.write_text(text.replace('        raise NotImplementedError("write MyWindowAttention.forward")\n', FORWARD))
    _install(pkg, site)
    t = _pytest(pkg, site)
    assert t.returncode == 0, t.stdout[-3000:]
    assert "16 passed" in t.stdout.splitlines()[-1], t.stdout[-500:]  # 2 tests x 8 checks


def test_scaffold_bad_input(cli_here, tmp_path):
    code, out, err = cli_here("new-plugin", "9lives")
    assert code == 2 and "must be ASCII letters, digits and _, starting with a letter" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = cli_here("new-plugin", "class")
    assert code == 2 and "is a Python keyword" in err
    code, out, err = cli_here("new-plugin", "full")
    assert code == 2 and "already registered (builtin); choose another name" in err
    code, out, err = cli_here("new-plugin", "mine", "--dir", "")
    assert code == 2 and "directory is empty" in err
    assert cli_here("new-plugin", "mine")[0] == 0
    assert (tmp_path / "effattn-mine" / "pyproject.toml").is_file()
    code, out, err = cli_here("new-plugin", "mine")
    assert code == 2 and "already exists and is not empty" in err
    (tmp_path / "file").write_text("")
    code, out, err = cli_here("new-plugin", "other", "--dir", str(tmp_path / "file"))
    assert code == 2 and "cannot write" in err, err


def test_a_failed_scaffold_leaves_nothing_behind(tmp_path, monkeypatch):
    from effattn import scaffold

    def no_rename(src, dst):
        raise OSError(36, "File name too long")

    monkeypatch.setattr(scaffold.os, "rename", no_rename)
    target = tmp_path / "new" / "deeper"
    with pytest.raises(scaffold.ScaffoldError, match="cannot write .*File name too long"):
        scaffold.new_plugin("mine", str(target))
    assert not (tmp_path / "new").exists()  # the folders it made are gone too
    existing = tmp_path / "kept"
    existing.mkdir()
    with pytest.raises(scaffold.ScaffoldError):
        scaffold.new_plugin("mine", str(existing))
    assert list(existing.iterdir()) == []  # a folder that was there stays, empty


def test_scaffold_names(cli_here):
    for bad in ("fenêtre", "ﬁ", "a" * 65):
        code, _, err = cli_here("new-plugin", bad)
        assert code == 2 and "must be ASCII letters, digits and _" in err, (bad, err)
    code, _, err = cli_here("new-plugin", "Full")
    assert code == 2 and "a plugin named 'full' is already registered" in err
    code, _, err = cli_here("new-plugin", "class")
    assert code == 2 and "is a Python keyword" in err


MIX = """        u = self.in_proj(x)
        h = x.new_zeros(x.shape[0], self.d_model) if state is None else state["h"].to(x.dtype)
        out = []
        for t in range(x.shape[1]):
            h = self.decay * h + (1 - self.decay) * u[:, t]
            out.append(h)
        new = MixerState()
        new["h"] = h
        return self.out_proj(torch.stack(out, 1) if out else u), new
"""
STEP = """        state["h"] = self.decay * state["h"] + (1 - self.decay) * self.in_proj(x)[:, 0]
        return self.out_proj(state["h"][:, None])
"""


@pytest.mark.slow
def test_scaffold_mixer_round_trip(tmp_path, run_cli):
    """`new-plugin --mixer`: a third-party mixer package, listed as a mixer, failing its suite until
    mix and step_state are written, then passing the mixer conformance suite."""
    r = run_cli("new-plugin", "my_ema", "--mixer", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "effattn_my_ema.MyEmaMixer" in r.stdout
    pkg = tmp_path / "effattn-my-ema"
    site = tmp_path / "site"
    _install(pkg, site)
    listed = run_cli("list", "my_ema", env_extra={"PYTHONPATH": str(site)})
    row = next(x for x in listed.stdout.splitlines() if x.startswith("my_ema "))
    assert row.split()[1] == "mixer" and "entry point (effattn-my-ema)" in listed.stdout, listed.stdout
    t = _pytest(pkg, site)
    assert t.returncode == 1 and "NotImplementedError: write MyEmaMixer.mix" in t.stdout, t.stdout[-3000:]

    module = pkg / "effattn_my_ema" / "__init__.py"
    text = module.read_text().replace(
        "from effattn.mixers.base import MixerBase,", "from effattn.mixers.base import MixerBase, MixerState,"
    )
    text = text.replace('        raise NotImplementedError("write MyEmaMixer.mix")\n', MIX)
    module.write_text(text.replace('        raise NotImplementedError("write MyEmaMixer.step_state")\n', STEP))
    _install(pkg, site)
    t = _pytest(pkg, site)
    assert t.returncode == 0, t.stdout[-3000:]
    assert "18 passed" in t.stdout.splitlines()[-1], t.stdout[-500:]  # 2 tests x 9 checks
    r = run_cli("bench", "--attn", "my_ema", "--level", "layer", "--causal", "--seq-lens", "32", "--out",
                str(tmp_path / "e.jsonl"), "--min-run-time", "0.01", env_extra={"PYTHONPATH": str(site)})  # fmt: skip
    assert r.returncode == 0 and '"status": "ok"' in (tmp_path / "e.jsonl").read_text(), r.stderr
