"""The repository is complete on its own: every link in its markdown resolves inside it, nothing
refers to files outside it, and the docs cover every built-in and every column of a results row."""

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _tracked(suffixes) -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / f for f in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a checkout: every file under the root
        files = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [f for f in files if f.suffix in suffixes and f.is_file() and "plugins" not in f.relative_to(ROOT).parts[:2]]


def _anchors(md: str) -> set[str]:
    out = set()
    for title in re.findall(r"^#+\s+(.*)$", md, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("path", _tracked({".md"}), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_in_the_markdown_resolves_inside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        assert ROOT in dest.parents or dest == ROOT, f"{path.name}: {target} leaves the repository"
        assert dest.exists(), f"{path.name}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest.read_text(encoding="utf-8")), f"{path.name}: no heading for #{anchor}"


def test_nothing_refers_to_files_outside_the_repository():
    outside = re.compile(r"\.\./shared|SEMANTICS\.md|ANCHORS\.md|STYLE\.md")
    bad = [
        f"{f.relative_to(ROOT)}:{i}"
        for f in _tracked({".md", ".py", ".toml", ".cfg", ".txt", ""})
        for i, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if outside.search(line) and f.name != "test_docs.py"
    ]
    assert not bad, bad


def _builtins():
    import effattn

    return {n: effattn.get_entry(n) for n in effattn.list_attention() if effattn.get_entry(n).source == "builtin"}


def test_every_built_in_says_what_it_computes():
    """docs/semantics.md defines the built-ins it names; a built-in it does not name (a new file
    dropped into effattn/attention/, with nothing else edited) says what it computes in its own
    docstrings, which `effattn info NAME` prints: a module docstring and a class docstring."""
    import inspect

    doc = (ROOT / "docs" / "semantics.md").read_text(encoding="utf-8")
    builtins = _builtins()
    assert builtins
    bad = []
    for name, entry in builtins.items():
        if f"`{name}`" in doc:
            continue
        module = inspect.getmodule(entry.target)
        own = inspect.getdoc(module) or ""
        if not (entry.facts.description and len(own.split()) >= 20):
            bad.append(f"{name}: neither in docs/semantics.md nor described by its module's docstring")
    assert not bad, bad


def test_the_semantics_doc_names_only_plugins_that_exist():
    """The reverse: a section of docs/semantics.md about a built-in that is gone is a stale doc."""
    import effattn

    doc = (ROOT / "docs" / "semantics.md").read_text(encoding="utf-8")
    named = {m for h in re.findall(r"^#+ .*$", doc, re.M) for m in re.findall(r"`([a-z_]+)`", h)}
    known = set(effattn.list_attention())
    assert named and not named - known, sorted(named - known)


def test_the_measuring_doc_explains_every_column_of_a_row():
    """A reader must be able to recompute any number of a row from the row and the docs."""
    from effattn.bench import SweepSpec
    from effattn.bench.group import measure_group
    from effattn.spec import Variant

    doc = (ROOT / "docs" / "measuring.md").read_text(encoding="utf-8")
    spec = SweepSpec(
        seq_lens=[32],
        variants=[Variant("full", {}), Variant("sliding_window", {"window": 4})],
        heads=2,
        head_dim=8,
        min_run_time_s=0.02,
    )
    rows = measure_group(spec, list(spec.variants), 32)
    decode = dataclasses.replace(spec, mode="decode", causal=True, kv_heads=1)
    rows += measure_group(decode, list(decode.variants), 32)
    # and the fields a sweep adds to each row, or that only some rows carry
    keys = set().union(*(r.keys() for r in rows)) | {
        "fault",
        "memory_unmeasured",
        "traceback",
        "run_id",
        "measured_at",
        "executor",
        "isolation",
        "isolated",
    }
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"docs/measuring.md does not explain: {missing}"
