"""lucidrains' `performer-pytorch` (`FastAttention`) as a plugin, run through its own code path on
effattn's q, k and v: FAVOR+ with positive orthogonal random features, as effattn's `performer`.

Its own definition differs from effattn's `performer` in small ways, kept as they are (this plugin
measures the implementation users pick): it adds eps = 1e-4 to every feature, and its random
matrix is drawn from torch's global generator when the module is built (effattn seeds it, so a
plugin built with the same seed is the same).

Not declared (and refused):
* causal - its causal path stabilises the keys' features by the largest projection over *all*
  keys, then adds an unscaled eps, so a later key changes earlier outputs (docs/peers.md has the
  measurement); a causal mode that leaks the future is not offered as one;
* padding - `FastAttention` takes no mask (its `SelfAttention` wrapper zeroes padded values but
  still counts padded keys in the normaliser).
"""

from __future__ import annotations

import contextlib
import io

import torch

from ...registry import register_attention
from ..base import AttentionBase, check_int
from ..linear import linear_flops
from ._common import peer_begin, unavailable


@register_attention("performer_pytorch")
class PerformerPytorchPeer(AttentionBase):
    """performer-pytorch's FastAttention (lucidrains): FAVOR+, non-causal, no padding."""

    exact = False
    complexity = "O(n·m)"
    supports_causal = False
    supports_padding = False
    dtypes = ("float32", "float64")
    wraps = ("performer-pytorch",)
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"num_features": 32},)

    def __init__(self, num_features: int = 256, seed: int = 0):
        super().__init__()
        self.num_features = check_int("num_features", num_features, 1)
        self.seed = check_int("seed", seed, 0)
        self._impl: dict[int, torch.nn.Module] = {}

    @staticmethod
    def availability(device: str = "cpu") -> str | None:
        return unavailable("performer_pytorch")

    def _fast(self, d: int, device):
        if d not in self._impl:
            from performer_pytorch import FastAttention

            state = torch.random.get_rng_state()
            try:  # its projection is drawn from the global generator: seed it, and leave it as it was
                torch.manual_seed(self.seed)
                with contextlib.redirect_stdout(io.StringIO()):
                    self._impl[d] = FastAttention(dim_heads=d, nb_features=self.num_features, causal=False)
            finally:
                torch.random.set_rng_state(state)
        return self._impl[d].to(device)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        if (empty := peer_begin(self, "performer_pytorch", q, k, v, causal, key_padding_mask)) is not None:
            return empty
        self.last_backend = "performer-pytorch"
        fast = self._fast(q.shape[-1], q.device)
        fast.projection_matrix = fast.projection_matrix.to(q.dtype)
        return fast(q, k, v)

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """Forward matmul FLOPs of its non-causal FAVOR+: the two feature maps and linear
        attention over m features (counted as effattn's `performer`)."""
        m = self.num_features
        maps = 2 * batch * m * head_dim * (heads * n_q + kv_heads * n_k)
        return maps + linear_flops(batch, heads, kv_heads, n_q, n_k, m, head_dim, False, 1)
