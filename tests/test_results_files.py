"""The committed results stay usable: every results file loads with effattn's reader, PNG is the one
image format, and every experiment folder says what it answers, how it was made and on which commit.

Only what git keeps or would add is checked (`git ls-files --cached --others --exclude-standard`):
the ignored outputs of `make bench` (`results/bench-latest*`) and scratch folders are not results."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
# a command quoted in backticks: `effattn ...` or `python ...`
COMMAND = re.compile(r"`(effattn|python3?) [^`]+`")
COMMIT = re.compile(r"\bcommit\b|\b[0-9a-f]{7,40}\b", re.IGNORECASE)


def _files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "results"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        files = [ROOT / f for f in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a checkout: every file but make bench's
        files = [p for p in RESULTS.rglob("*") if not p.relative_to(RESULTS).parts[0].startswith("bench-latest")]
    return sorted(f for f in files if f.is_file())


FILES = _files()
JSONL = [f for f in FILES if f.suffix == ".jsonl"]
FOLDERS = sorted({RESULTS / f.relative_to(RESULTS).parts[0] for f in FILES if len(f.relative_to(RESULTS).parts) > 1})


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_there_are_results_files_and_experiment_folders():
    assert JSONL and FOLDERS


@pytest.mark.parametrize("path", JSONL, ids=_rel)
def test_every_results_file_loads_without_a_problem(path):
    from effattn.results import load

    problems = []
    df = load(str(path), on_problem=problems.append)
    assert not problems, problems
    assert len(df) >= 1, f"{_rel(path)} holds no row"


def test_png_is_the_one_image_format():
    svg = [_rel(f) for f in FILES if f.suffix.lower() == ".svg"]
    assert not svg, svg


@pytest.mark.parametrize("folder", FOLDERS, ids=_rel)
def test_every_experiment_folder_says_how_it_was_made(folder):
    readme = folder / "README.md"
    assert readme.is_file(), f"{_rel(folder)} has no README.md"
    text = readme.read_text(encoding="utf-8")
    assert any(COMMAND.search(line) for line in text.splitlines()), f"{_rel(readme)} quotes no command"
    assert COMMIT.search(text), f"{_rel(readme)} names no commit"
