"""Built-in attention plugins: importing this package registers them. One family per file."""

from . import (  # noqa: F401 - importing a plugin module registers it
    bigbird,
    deltanet,
    flex_named,
    full,
    gla,
    linear,
    linformer,
    masked,
    moba,
    nsa,
    nystrom,
    peer_hf_bigbird,
    peer_hf_longformer,
    peer_local_attention,
    peer_performer_pytorch,
    performer,
    sliding_window,
    sparse,
    xformers_attn,
)
