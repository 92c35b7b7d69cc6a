"""effattn's own attention plugins, one family per file; the wrappers of other libraries are in
`peers`, and the engines the plugins share in `effattn.kernels`.

A built-in is found by being here: `load_builtins` imports every module of this package and of
`peers` (but `base` and the private `_*` ones), and a module registers its plugins as it is
imported (`@register_attention`). A new built-in is one new file; nothing lists it.
"""

from __future__ import annotations

import importlib
import pkgutil

#: modules that register nothing: the plugins' bases and helpers
NOT_PLUGINS = ("base",)


def builtin_modules() -> list[str]:
    """The modules that hold the built-in plugins, by name."""
    from . import peers

    out = []
    for pkg in (importlib.import_module(__name__), peers):
        for m in pkgutil.iter_modules(pkg.__path__):
            if not m.ispkg and not m.name.startswith("_") and m.name not in NOT_PLUGINS:
                out.append(f"{pkg.__name__}.{m.name}")
    return sorted(out)


def load_builtins() -> None:
    """Import every built-in plugin module (each registers its plugins)."""
    for name in builtin_modules():
        importlib.import_module(name)
