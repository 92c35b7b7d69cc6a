import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _chunk_paths(request, monkeypatch):
    """At test sizes most pattern calls would take the chunked engine's dense shortcut (one
    masked SDPA call when the chunks cover most pairs) and never reach the chunk and piece paths
    the tests are there to check. Off in this process unless a test is marked `dense_shortcut`;
    CLI runs in fresh processes keep it, as users get it. The same for MoBA's dense path (every
    call of a test's size would take it)."""
    if "dense_shortcut" not in request.keywords:
        from effattn.attention import base, moba

        monkeypatch.setattr(base, "DENSE_ABOVE", None)
        monkeypatch.setattr(moba, "DENSE_MAX_ELEMENTS", None)


# Ray instances that the tests start (and the CLI runs they spawn) send no usage statistics.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _own_machine_history(monkeypatch, tmp_path):
    """What sweeps learn about this machine (its usual reference rate: effattn.bench.load.History)
    goes to a folder of each test's own, never to the user's cache: a test starts with no history,
    and rates a test scripts reach no other test (the CLI runs a test starts inherit it)."""
    monkeypatch.setenv("EFFATTN_CACHE_DIR", str(tmp_path / "effattn-cache"))


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """Install the third-party demo packages (one good, one broken at import, one that kills its
    worker, for the Ray tests, the adversarial ones of the integrity tests and the subtly wrong
    exact ones of tests/test_exactness.py) with pip into a
    private folder, as a user would install a plugin package, and return that folder."""
    target = tmp_path_factory.mktemp("site")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--disable-pip-version-check",
        "--target",
        str(target),
        str(HERE / "plugins" / "demo_good"),
        str(HERE / "plugins" / "demo_broken"),
        str(HERE / "plugins" / "demo_faulty"),
        str(HERE / "plugins" / "demo_adversarial"),
        str(HERE / "plugins" / "demo_wrong"),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return target


@pytest.fixture
def with_plugins(plugin_site, monkeypatch):
    """The registry as it is with the demo packages installed; restored afterwards."""
    from effattn import registry

    registry._ensure_loaded()  # (the built-ins, registered once at first use, belong to what is restored)
    saved = dict(registry._REGISTRY), dict(registry._BROKEN)
    monkeypatch.syspath_prepend(str(plugin_site))
    registry.load_entry_points(force=True)
    yield plugin_site
    registry._REGISTRY.clear(), registry._REGISTRY.update(saved[0])
    registry._BROKEN.clear(), registry._BROKEN.update(saved[1])
    for m in [m for m in sys.modules if m.startswith("effattn_demo")]:
        del sys.modules[m]


def _run_cli(*args, env_extra=None, timeout=300, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "effattn.cli", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd
    )


@pytest.fixture
def run_cli():
    """Run `effattn ...` in a fresh process, as a user would; returns the CompletedProcess."""
    return _run_cli


@pytest.fixture
def cli_here(capsys, monkeypatch, tmp_path):
    """`effattn ARGS` in this process, in tmp_path: for what fails before any work starts (bad
    input), where a new process would only add two seconds of imports. Returns (code, out, err)."""
    from effattn.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args):
        with pytest.raises(SystemExit) as e:
            main(list(args))
        got = capsys.readouterr()
        return e.value.code, got.out, got.err

    return run
