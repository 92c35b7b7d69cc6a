"""The front door and the docs site hold together: every link in README.md, docs/ and the results
folders' READMEs resolves to a file of the repository (and its #anchor to a heading there), every
repository path the README and docs quote as code exists, every page is in the site's nav, and the
site builds with `mkdocs build --strict` (where mkdocs is installed: `make docs` installs it, and CI
runs `make docs` before `make test`).

Links to files outside docs/ would break the strict site build, so the docs pages quote such files
as code spans (`results/scaling-cpu/`); those spans are checked here as the links are."""

import glob
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target), with an optional <target> and "title"
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+[\"'].*[\"'])?\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _repo_files() -> set[str]:
    """What a fresh clone would hold: the tracked files and the new ones git would add."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {f for f in out.splitlines() if (ROOT / f).exists()}
    except (OSError, subprocess.CalledProcessError):  # not a checkout: every file under the root
        skip = {".git", ".venv", "site"}
        return {
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        }


FILES = _repo_files()
DIRS = {str(Path(f).parents[i]) for f in FILES for i in range(len(Path(f).parts) - 1)}


def _pages() -> list[Path]:
    pages = ["README.md"]
    pages += sorted(f for f in FILES if f.startswith("docs/") and f.endswith(".md"))
    pages += sorted(f for f in FILES if f.startswith("results/") and f.endswith("/README.md"))
    return [ROOT / p for p in pages if p in FILES]


PAGES = _pages()


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        if fence is None:
            out.append((i, line))
    return out


def slug(title: str) -> str:
    """GitHub's heading anchor (mkdocs.yml gives the site the same ones): the heading's text
    without its markup, lowercased, punctuation other than - and _ dropped, each space a -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose(text):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline or reference link and image, not those in code."""
    out = []
    for i, line in _prose(text):
        bare = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        out += [(i, t) for t in INLINE.findall(bare)]
        m = REFERENCE.match(bare)
        if m:
            out.append((i, m.group(1)))
    return out


def link_problems(page: Path, text: str | None = None) -> list[str]:
    """What is wrong with the links of page (its text, unless given: a probe's)."""
    text = page.read_text(encoding="utf-8") if text is None else text
    bad = []
    for line, target in links(text):
        where = f"{_rel(page)}:{line}: ({target})"
        if not target:
            bad.append(f"{where} is empty")
            continue
        scheme = urlsplit(target).scheme
        if scheme in ("http", "https"):
            parts = urlsplit(target)
            if not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}(:\d+)?", parts.netloc) or re.search(r"\s", target):
                bad.append(f"{where} is not a well-formed URL")
            continue
        if scheme == "mailto":
            if not re.fullmatch(r"mailto:[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", target):
                bad.append(f"{where} is not a well-formed address")
            continue
        if scheme:
            bad.append(f"{where}: only relative paths, http(s) and mailto links are allowed")
            continue
        file_part, _, anchor = target.partition("#")
        if file_part.startswith("/"):
            bad.append(f"{where} is absolute: it resolves on neither GitHub nor the site")
            continue
        dest = (page.parent / file_part).resolve() if file_part else page
        own = text if dest == page else None
        if dest != ROOT and ROOT not in dest.parents:
            bad.append(f"{where} leaves the repository")
            continue
        rel = "." if dest == ROOT else str(dest.relative_to(ROOT))
        if own is None and rel not in FILES and rel not in DIRS and rel != ".":
            bad.append(f"{where} is no file or folder of the repository")
            continue
        if anchor:
            if dest.suffix != ".md":
                bad.append(f"{where}: an anchor into a file that is not markdown")
            elif anchor not in anchors(own if own is not None else dest.read_text(encoding="utf-8")):
                bad.append(f"{where}: {rel} has no heading for #{anchor}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_link_resolves(page):
    bad = link_problems(page)
    assert not bad, "\n".join(bad)


# a code span that names a repository path: it starts with a top-level folder of the repository
TOP = sorted({f.split("/")[0] for f in FILES if "/" in f})
PATH_SPAN = re.compile(r"^(?:" + "|".join(map(re.escape, TOP)) + r")/[\w./*{},<>-]*$")


def _expand_braces(s: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", s)
    if not m:
        return [s]
    return [x for alt in m.group(1).split(",") for x in _expand_braces(s[: m.start()] + alt + s[m.end() :])]


def _ignored(path: str) -> bool:
    """A path git ignores (what `make bench` writes, scratch folders): an output, not a file of
    the repository, so it may well not exist."""
    try:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0
    except OSError:
        return False


def path_span_problems(page: Path, text: str | None = None) -> list[str]:
    bad = []
    for line, prose in _prose(page.read_text(encoding="utf-8") if text is None else text):
        for _, span in CODE_SPAN.findall(prose):
            span = span.strip()
            if not PATH_SPAN.match(span) or "<" in span or ">" in span:
                continue  # a command, a placeholder (`results/<folder>/`), not a path
            for path in _expand_braces(span):
                path = path.rstrip("/")
                if "*" in path:
                    ok = any(Path(f).match(path) for f in FILES) or bool(glob.glob(str(ROOT / path)))
                else:
                    ok = path in FILES or path in DIRS
                if not ok and not _ignored(path):
                    bad.append(f"{_rel(page)}:{line}: `{span}` names no file or folder of the repository")
    return bad


QUOTING = [p for p in PAGES if _rel(p) == "README.md" or _rel(p).startswith("docs/")]


@pytest.mark.parametrize("page", QUOTING, ids=_rel)
def test_every_repository_path_quoted_as_code_exists(page):
    bad = path_span_problems(page)
    assert not bad, "\n".join(bad)


def test_the_checks_catch_a_broken_link_a_missing_anchor_and_a_missing_path():
    """The two checks above fail on what they are for: a probe page, checked as if it were in docs/
    (it is never written there, where another run of the suite could list it)."""
    probe = (
        "# Probe\n\n[ok](#probe) [ok too](findings.md#how-each-built-in-scales-with-n) [up](../README.md)\n"
        "[gone](no-such-page.md) [no heading](findings.md#no-such-heading) [here](#nowhere)\n"
        "[bad url](https:///no-host) [out](../../etc/passwd)\n\n"
        "`results/scaling-cpu/` `results/no-such-folder/` `results/bench-latest.jsonl` `results/<folder>/`\n\n"
        "```\n[in code](not-checked.md) `results/not-checked/`\n```\n"
    )
    page = ROOT / "docs" / "_probe.md"
    bad = link_problems(page, probe) + path_span_problems(page, probe)
    text = "\n".join(bad)
    assert len(bad) == 6, text
    for expected in ("no-such-page.md", "#no-such-heading", "#nowhere", "no-host", "leaves the", "no-such-folder"):
        assert expected in text, (expected, text)


def test_github_anchors():
    assert slug("Generating: one token at a time (`--mode decode`)") == "generating-one-token-at-a-time---mode-decode"
    assert slug("The newer variants, causal, beside causal `full`") == "the-newer-variants-causal-beside-causal-full"
    assert slug("Native Sparse Attention (`nsa`)") == "native-sparse-attention-nsa"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1", "a-2"}


def test_the_readme_is_a_front_door():
    """Issue #28: at most about 250 lines, the two commands on the first screen, one picture."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)
    first_screen = "\n".join(lines[:40])
    assert "## The two commands" in first_screen
    assert re.search(r"^make bench\s+#", first_screen, re.M) and re.search(r"^make test\s+#", first_screen, re.M)
    pictures = [t for _, t in links("\n".join(lines)) if t.endswith(".png")]
    assert len(pictures) == 1, pictures


def test_every_docs_page_is_in_the_sites_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:", 1)[1]
    listed = set(re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?(\S+\.md)\s*$", nav, re.M))
    pages = {f[len("docs/") :] for f in FILES if f.startswith("docs/") and f.endswith(".md")}
    assert pages - listed == set(), sorted(pages - listed)
    assert listed - pages == set(), sorted(listed - pages)


def _mkdocs() -> list[str] | None:
    beside = Path(sys.executable).with_name("mkdocs")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mkdocs")
    return [found] if found else None


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path):
    cmd = _mkdocs()
    if cmd is None:
        pytest.skip("mkdocs is not installed: `make docs` installs the docs extra (CI runs it before the tests)")
    try:
        import material  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the docs extra is not installed ({e}): `make docs` installs it")
    done = subprocess.run(
        [*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    assert (tmp_path / "site" / "api" / "registry" / "index.html").is_file()
