"""The package's layers only look down: a module imports only modules of its own layer or below
(function-level imports included), nothing imports the CLI, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "effattn"

# Lowest first. A module's layer is the longest prefix listed here.
LAYERS = [
    ["effattn._version", "effattn.errors", "effattn.options", "effattn.stats", "effattn.guard", "effattn.reference"],
    [
        "effattn.env",
        "effattn.registry",
        "effattn.store",
        "effattn.spec",
        "effattn.presets",
        "effattn.kernels",
        "effattn.contract",
    ],  # fmt: skip
    # the package's face sits with the plugins: it hands the registry effattn's own plugins to load
    [
        "effattn.attention",
        "effattn.mixers",
        "effattn.decoding",
        "effattn.model",
        "effattn.tasks",
        "effattn.testing",
        "effattn.scaffold",
        "effattn",
    ],  # fmt: skip
    ["effattn.bench", "effattn.results"],
    ["effattn.report"],
    ["effattn.cli"],
]
# Upward imports that are part of a design, each with why (none today: the registry imports no
# plugin; effattn's face gives it the built-ins as a source, effattn.registry.add_source)
ALLOWED_UP: set[tuple[str, str]] = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(mod: str) -> bool:
    rel = Path(*mod.split("."))
    return (PKG.parent / rel).with_suffix(".py").is_file() or (PKG.parent / rel / "__init__.py").is_file()


def imports() -> dict[str, set[str]]:
    """module -> the effattn modules it imports, anywhere in its body."""
    out = {}
    for f in PKG.rglob("*.py"):
        mod = _module(f)
        pkg = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        got = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("effattn"):
                    continue
                subs = [f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")]
                got |= set(subs) if subs and len(subs) == len(node.names) else {target} | set(subs)
            elif isinstance(node, ast.Import):
                got |= {a.name for a in node.names if a.name.startswith("effattn")}
        got.discard(mod)
        out[mod] = got
    return out


def layer(mod: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            # "effattn" (the package's API module) is placed by itself, never as a prefix
            hit = mod == n or (n != "effattn" and mod.startswith(n + "."))
            if hit and len(n) > best:
                best, rank = len(n), i
    assert rank is not None, f"{mod} is in no layer: add it to LAYERS in {__file__}"
    return rank


def upward(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m, ts in sorted(graph.items())
        for t in sorted(ts)
        if layer(t) > layer(m) and not any(m == a and (t == b or t.startswith(b + ".")) for a, b in ALLOWED_UP)
    ]


def cycles(graph: dict[str, set[str]]) -> list[str]:
    # A module importing its own package (for a sibling) is not a cycle with the package's
    # __init__ that gathers it; the allowed upward imports are the registry's discovery, not use.
    edges = {
        m: {t for t in ts if not (m.startswith(t + ".") and t == m.rsplit(".", 1)[0]) and (m, t) not in ALLOWED_UP}
        for m, ts in graph.items()
    }
    done, found = set(), []

    def visit(m, stack):
        if m in stack:
            found.append(" -> ".join(stack[stack.index(m) :] + [m]))
            return
        if m in done:
            return
        for t in sorted(edges.get(m, ())):
            visit(t, stack + [m])
        done.add(m)

    for m in sorted(edges):
        visit(m, [])
    return found


def test_every_module_is_placed_and_imports_only_downward():
    bad = upward(imports())
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_cli():
    bad = [
        f"{m} imports {t}"
        for m, ts in imports().items()
        if not m.startswith("effattn.cli")
        for t in ts
        if t == "effattn.cli" or t.startswith("effattn.cli.")
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    found = cycles(imports())
    assert not found, "\n".join(found)


def test_the_checks_find_what_they_look_for():
    """Not vacuous: an upward import, a CLI import and a cycle planted in the real graph are found."""
    graph = imports()
    assert "effattn.errors" in graph["effattn.attention.base"]  # the parser sees relative imports
    assert not upward(graph) and not cycles(graph)
    graph["effattn.attention.full"] = graph["effattn.attention.full"] | {"effattn.bench.sweep"}
    assert upward(graph) == ["effattn.attention.full (layer 2) imports effattn.bench.sweep (layer 3)"]
    graph["effattn.store"] = graph["effattn.store"] | {"effattn.spec"}
    graph["effattn.spec"] = graph["effattn.spec"] | {"effattn.store"}
    assert any("effattn.spec -> effattn.store -> effattn.spec" in c for c in cycles(graph))
    # a cycle through a package's __init__ is a cycle too
    graph = imports()
    graph["effattn.results"] = graph["effattn.results"] | {"effattn.bench"}
    graph["effattn.bench.sweep"] = graph["effattn.bench.sweep"] | {"effattn.results"}
    assert any("effattn.bench -> effattn.bench.sweep -> effattn.results -> effattn.bench" in c for c in cycles(graph))
    # a module missing from LAYERS is named, not placed by the "effattn" prefix
    with pytest.raises(AssertionError, match="effattn.brand_new is in no layer"):
        layer("effattn.brand_new")


def test_plugins_import_neither_the_backbone_nor_what_measures_them():
    bad = [f"{m} imports {t}" for m, ts in imports().items() if m.startswith("effattn.attention")
           for t in ts if t.split(".")[:2] in (["effattn", "model"], ["effattn", "tasks"], ["effattn", "testing"],
                                                ["effattn", "scaffold"])]  # fmt: skip
    assert not bad, "\n".join(bad)
