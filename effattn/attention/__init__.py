"""Built-in attention plugins: importing this package registers them. One family per file."""
from . import (  # noqa: F401
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
