"""A row's commit says "-dirty" when the measuring code differs from the commit, not when some
other file of the checkout does (the committed reference sweep, a tracked file, once marked
itself dirty by being written)."""

import shutil
import subprocess

import pytest

from effattn.env import git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo, *args):
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True, capture_output=True
    )


def test_dirty_means_the_package_changed_not_a_results_file(tmp_path):
    pkg, res = tmp_path / "pkg", tmp_path / "results"
    pkg.mkdir(), res.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    (res / "sweep.jsonl").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "c")
    clean = git_commit.__wrapped__(str(pkg))
    assert clean and not clean.endswith("-dirty")
    (res / "sweep.jsonl").write_text('{"a": 1}\n')  # the sweep writes its results
    assert git_commit.__wrapped__(str(pkg)) == clean
    (pkg / "b.py").write_text("y = 2\n")  # an untracked module in the package
    assert git_commit.__wrapped__(str(pkg)) == clean + "-dirty"
    (pkg / "b.py").unlink()
    (pkg / "a.py").write_text("x = 2\n")  # a changed one
    assert git_commit.__wrapped__(str(pkg)) == clean + "-dirty"
