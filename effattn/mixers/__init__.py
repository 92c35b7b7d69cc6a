"""effattn's own sequence mixers (the second kind of plugin, `kind = "mixer"`: docs/mixers.md), one
family per file: GLA (`gla`), DeltaNet and Gated DeltaNet (`deltanet`), Mamba-2 (`mamba2`). Their
q, k, v recurrences are the attention plugins `gla_core`, `deltanet_core` and `gated_deltanet_core`
(effattn.attention), which these layers call.

As for the attention plugins, a built-in mixer is found by being here: every module but `base`
and the private ones is imported and registers its mixers (`@register_mixer`).
"""

from __future__ import annotations

import importlib
import pkgutil

NOT_PLUGINS = ("base",)


def mixer_modules() -> list[str]:
    pkg = importlib.import_module(__name__)
    return sorted(
        f"{__name__}.{m.name}"
        for m in pkgutil.iter_modules(pkg.__path__)
        if not m.ispkg and not m.name.startswith("_") and m.name not in NOT_PLUGINS
    )


def load_mixers() -> None:
    for name in mixer_modules():
        importlib.import_module(name)
