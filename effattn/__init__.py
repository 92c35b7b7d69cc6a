"""effattn: benchmark efficient attention fairly.

    import effattn
    attn = effattn.create_attention("sliding_window", window=128)
    out = attn(q, k, v, causal=True)        # q, k, v: (batch, heads, seq, head_dim)

The registry is this package's API; sweeps are in effattn.bench, reports in effattn.report.
"""

from . import registry as _registry
from ._version import __version__
from .errors import EffattnError, OptionError, UnknownAttentionError, UnsupportedError
from .registry import (
    Facts,
    broken_plugins,
    create_attention,
    get_entry,
    list_attention,
    register_attention,
    register_mixer,
)


def _builtins() -> None:
    from .attention import load_builtins
    from .mixers import load_mixers

    load_builtins()
    load_mixers()


_registry.add_source(_builtins)  # effattn's own plugins (effattn.attention, effattn.mixers), found when first needed

__all__ = [
    "EffattnError",
    "OptionError",
    "UnknownAttentionError",
    "UnsupportedError",
    "Facts",
    "broken_plugins",
    "create_attention",
    "get_entry",
    "list_attention",
    "register_attention",
    "register_mixer",
    "__version__",
]
