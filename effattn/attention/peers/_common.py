"""What the wrappers of other libraries share: the call's checks and its empty answer before the
library is reached (`peer_begin`), the one-line refusal when the library is not installed
(`unavailable`), and the identity projection through which a library's own attention module is
handed effattn's q, k and v (`Given`)."""

from __future__ import annotations

from torch import nn

from ...errors import UnsupportedError

INSTALL = "pip install 'effattn[peers]'"


def unavailable(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as e:  # noqa: BLE001 - any import failure makes the peer unavailable, with the reason
        return f"unavailable: {module} not importable ({type(e).__name__}); {INSTALL}"
    return None


def peer_begin(attn, name: str, q, k, v, causal, key_padding_mask):
    """What every peer wrapper does before calling its library: the call's checks, the empty-input
    answer, and a clear refusal when the library is not installed. Returns the empty output, or
    None to go on."""
    attn.check_call(q, k, v, causal, key_padding_mask)
    if (empty := attn.empty_output(q, k, v)) is not None:
        return empty
    why = attn.availability()
    if why:
        raise UnsupportedError(f"{name}: {why}")
    return None


class Given(nn.Module):
    """Stands in for a projection: returns the tensor set before the call, whatever it is given."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, _hidden):
        return self.value
