"""benchmarks/candidates.py: the three candidate plugins' contract and the script's bad input."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("reformer_pytorch")
pytest.importorskip("routing_transformer")
pytest.importorskip("sinkhorn_transformer")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "candidates.py"
PLUGINS = SCRIPT.with_name("candidate_plugins.py")


@pytest.fixture(scope="module")
def cand():
    spec = importlib.util.spec_from_file_location("candidate_plugins", PLUGINS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SMALL = {
    "reformer_lsh": {"bucket_size": 8, "n_hashes": 2},
    "routing": {"window_size": 8},
    "sinkhorn": {"bucket_size": 8},
}


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("n", [1, 23, 64])
def test_shape_no_mutation_deterministic(cand, name, n):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for _ in range(3))
    before = [t.clone() for t in (q, k, v)]
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    a = cand.PLUGINS[name](**SMALL[name])
    out = a(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    for t, t0 in zip((q, k, v), before):
        assert torch.equal(t, t0)
    torch.manual_seed(0)
    b = cand.PLUGINS[name](**SMALL[name])
    assert torch.equal(a(q, k, v), out)  # a second call
    assert torch.equal(b(q, k, v), out)  # a second plugin, same seed
    torch.set_rng_state(rng)


@pytest.mark.parametrize("name", list(SMALL))
def test_refuses_causal_and_padding(cand, name):
    import effattn

    a = cand.PLUGINS[name](**SMALL[name])
    q = torch.randn(1, 2, 16, 8)
    with pytest.raises(effattn.UnsupportedError):
        a(q, q, q, causal=True)
    with pytest.raises(effattn.UnsupportedError):
        a(q, q, q, key_padding_mask=torch.zeros(1, 16, dtype=torch.bool))
    assert not a.exact and not a.supports_causal


@pytest.mark.parametrize("name", list(SMALL))
def test_unavailable_reason_when_import_fails(cand, name, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(mod, *a, **kw):
        if mod.split(".")[0] == cand.PKG[name]:
            raise ImportError(f"No module named {mod!r}")
        return real(mod, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    why = cand.PLUGINS[name].availability("cpu")
    assert why.startswith("unavailable: pip install") and "\n" not in why and cand.PKG[name] in why
    monkeypatch.undo()
    assert cand.PLUGINS[name].availability("cpu") is None


def test_registered_and_conformance(cand):
    from effattn.registry import get_entry
    from effattn.testing import run_checks

    cand.register()
    cand.register()  # twice is fine
    assert get_entry("routing").facts.exact is False
    failed = [(r.name, r.detail) for r in run_checks("sinkhorn", bucket_size=8) if r.status == "failed"]
    assert not failed


def test_bad_option(cand):
    import effattn

    with pytest.raises(effattn.OptionError):
        cand.ReformerLSH(bucket_size=0)
    with pytest.raises(effattn.OptionError):
        cand.ReformerLSH(qk="v")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run"],
        ["run", "--out-dir", "X", "--only", "sweep-nope"],
        ["run", "--out-dir", "X", "--only", ","],
        ["run", "--out-dir", "X", "--min-run-time", "nan"],
        ["table", "/nonexistent/dir"],
        ["table", "EMPTY"],
        ["table", "GARBAGE"],  # a torn or foreign results file: no rows, said so (it printed nothing, exit 0)
        ["run", "--out-dir", "FILE"],
    ],
)
def test_bad_cli_input(args, tmp_path):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "GARBAGE").mkdir()
    (tmp_path / "GARBAGE" / "sweep-fwd.jsonl").write_text("garbage\n{}\n")
    args = [str(tmp_path / a) if a in ("X", "EMPTY", "FILE", "GARBAGE") else a for a in args]
    p = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    lines = [x for x in p.stderr.strip().splitlines() if x.strip() and "Warning" not in x]
    assert len(lines) == 1 and ("error" in lines[0] or "candidates:" in lines[0]), p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "X").exists()


def _moved(f, n=64, d=16):
    """How far changing only the last token's q, k, v moves the outputs of the tokens before it."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, d, generator=g) for _ in range(3))
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[:, :, -1] = torch.randn(1, 2, d, generator=g) * 3
    torch.manual_seed(0)
    a = f(q, k, v)
    torch.manual_seed(0)
    b = f(q2, k2, v2)
    return float((a[..., :-1, :] - b[..., :-1, :]).abs().max())


def test_the_libraries_causal_modes_let_later_tokens_move_earlier_outputs():
    """Why no candidate is offered causally (CAUSAL): in the raw libraries' causal modes, a change
    to the last token alone moves earlier outputs. The same probe on a causal mask that holds
    (effattn's `full`) moves nothing, so the probe can tell."""
    from reformer_pytorch import LSHAttention
    from routing_transformer import KmeansAttention

    import effattn

    full = effattn.create_attention("full")
    assert _moved(lambda q, k, v: full(q, k, v, causal=True)) == 0
    lsh = LSHAttention(bucket_size=8, n_hashes=2, causal=True)
    assert _moved(lambda q, k, v: lsh(k.reshape(2, 64, 16), v.reshape(2, 64, 16))[0]) > 1e-2
    km = KmeansAttention(4, 16, 2, 16, causal=True)
    assert _moved(lambda q, k, v: km(q, k, v)[0]) > 1e-2
