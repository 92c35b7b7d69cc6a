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
)


def _builtins() -> None:
    from .attention import load_builtins

    load_builtins()


_registry.add_source(_builtins)  # effattn's own plugins, found in effattn.attention when first needed

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
    "__version__",
]
