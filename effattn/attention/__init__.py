"""Built-in attention plugins: importing this package registers them. One family per file."""

from . import (  # noqa: F401 - importing a plugin module registers it
    bigbird,
    full,
    linear,
    linformer,
    masked,
    nystrom,
    performer,
    sliding_window,
    sparse,
    xformers_attn,
)
