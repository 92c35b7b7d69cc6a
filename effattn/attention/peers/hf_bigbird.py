"""HF transformers' `BigBirdBlockSparseAttention` as a plugin, fed effattn's q, k and v through its own
code path: its query/key/value projections are replaced by modules that hand over the given q, k
and v in the (batch, seq, heads * head_dim) layout it expects; the block gathers, the masks, the
five-part softmax and the value products are HF's.

What HF computes (docs/peers.md has the measurements), as a new user would meet it:

* *Random blocks are per head and change with the mode.* In training mode they are drawn from
  numpy's global generator, reseeded with the module's `seed` at every call (HF's
  `np.random.seed(seed)`), so one shape always gets the same blocks. In eval mode (what
  `model.eval()` gives) every random slot is block 0, which is already global: block 0's keys then
  enter the middle rows' softmax 1 + r times. The plugin runs the training-mode draw (there is no
  dropout on this path) and puts numpy's generator back as it found it.
* *Where the random blocks lie.* For n in {1024, 3072, 4096} HF follows the paper's old plans:
  random blocks among the first 1024 tokens, and a random slot may repeat a window or global block
  (then its keys count twice). At other lengths above (2r + 5) blocks, every row's random blocks
  lie in the first 2r + 5 blocks (HF's `_get_rand_attn_plan`).
* *Short sequences.* At or below (2r + 5) blocks HF's `BigBirdModel` switches to full attention;
  so does the plugin (backend `full (HF switches below (2r+5) blocks)`).
* *Length a multiple of the block.* `BigBirdModel` pads; the plugin pads, masks the added keys and
  cuts the added rows. Its masks mark tokens (a masked row's output is zeroed), so effattn's
  key-only padding mask is not declared. HF masks by adding -10000 to a score: a row whose every
  real score is below about -10000 gives the added keys the weight (extreme inputs only).
* *Refused:* num_random_blocks = 0 (HF's random gather fails on it), a value head size other than
  the query's, and lengths at which HF's draw cannot place r blocks (at n = 3072 or 4096 with a
  large block or many random blocks, some row has too few candidates: numpy fails inside HF).

Because the pattern is per head, random and may count a key twice, it is no one `dense_mask`: the
plugin is declared approximate (its error against `full` is reported), and tests/test_peers.py
checks it against a float64 softmax over the blocks HF drew, repeats included.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedError
from ...kernels.masks import dense_attention
from ...registry import register_attention
from ..base import AttentionBase, check_int
from ._common import Given, peer_begin, unavailable


def sparse_blocks(n: int, block: int, r: int) -> int | None:
    """Blocks of the padded sequence when HF runs its block-sparse path at length n, else None
    (at or below 2r + 5 blocks `BigBirdModel` uses full attention)."""
    m = -(-n // block)
    return m if m > 2 * r + 5 else None


def _refusing(draw, block: int, r: int):
    """HF's random-block draw, with its failure turned into a clear refusal. At n = 3072 and 4096 HF
    draws every row's blocks among the first 1024 tokens (the paper's old plan); with a large block
    or many random blocks some row has fewer candidates than r, and numpy fails inside HF (a
    broadcast of the candidates into the r slots)."""

    def run(*args, **kwargs):
        try:
            return draw(*args, **kwargs)
        except ValueError as e:
            raise UnsupportedError(
                f"hf_bigbird: HF cannot place {r} random blocks of {block} at this length "
                f"(too few candidate blocks in its plan; numpy: {str(e).splitlines()[0]})"
            ) from None

    return run


@register_attention("hf_bigbird")
class HFBigBirdPeer(AttentionBase):
    """HF transformers BigBirdBlockSparseAttention: 3 sliding + 2 global + r random blocks per head (HF's draw)."""

    exact = False  # per-head random pattern, repeats possible: no single dense_mask (module docstring)
    complexity = "O(n·b·(5+r))"
    supports_causal = False
    supports_padding = False
    supports_cross = False
    dtypes = ("float32", "float64")
    wraps = ("transformers",)
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"block_size": 8, "num_random_blocks": 1},)

    def __init__(self, block_size: int = 64, num_random_blocks: int = 3, seed: int = 0):
        super().__init__()
        self.block_size = check_int("block_size", block_size, 1)
        # r = 0 crashes inside HF (a reshape of its empty random gather): at least one
        self.num_random_blocks = check_int("num_random_blocks", num_random_blocks, 1)
        self.seed = check_int("seed", seed, 0, 2**32 - 1)  # numpy's seed range
        self._impl: dict[tuple, nn.Module] = {}

    @staticmethod
    def availability(device: str = "cpu") -> str | None:
        return unavailable("transformers")

    def _module(self, heads: int, head_dim: int):
        key = (heads, head_dim)
        if key not in self._impl:
            from transformers import BigBirdConfig
            from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

            cfg = BigBirdConfig(
                hidden_size=heads * head_dim,
                num_attention_heads=heads,
                block_size=self.block_size,
                num_random_blocks=self.num_random_blocks,
                attention_type="block_sparse",
                use_bias=False,
            )
            with torch.random.fork_rng(devices=[]):  # its discarded projections draw from torch's generator
                m = BigBirdBlockSparseAttention(cfg, seed=self.seed).train()  # the training-mode draw
            m.query, m.key, m.value = Given(), Given(), Given()
            for draw in ("_bigbird_block_rand_mask", "_bigbird_block_rand_mask_with_head"):
                setattr(m, draw, _refusing(getattr(m, draw), self.block_size, self.num_random_blocks))
            self._impl[key] = m
        return self._impl[key]

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        if (empty := peer_begin(self, "hf_bigbird", q, k, v, causal, key_padding_mask)) is not None:
            return empty
        B, H, n, D = q.shape
        if v.shape[-1] != D:  # HF's layout has one head size for q, k and v
            raise UnsupportedError(f"hf_bigbird: the value head size ({v.shape[-1]}) must equal the query's ({D})")
        b, r = self.block_size, self.num_random_blocks
        m = sparse_blocks(n, b, r)
        if m is None:
            self.last_backend = "full (HF switches below (2r+5) blocks)"
            return dense_attention(q, k, v, None)
        self.last_backend = "hf-bigbird"
        from transformers.models.big_bird.modeling_big_bird import BigBirdModel

        N = m * b
        mod = self._module(H, D)

        def given(t):  # (B, H, n, D) -> (B, N, H*D), a fresh tensor
            return F.pad(t, (0, 0, 0, N - n)).transpose(1, 2).reshape(B, N, H * D)

        tokens = torch.zeros(B, N, dtype=q.dtype, device=q.device)
        tokens[:, :n] = 1
        blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(tokens, b)
        mod.query.value, mod.key.value, mod.value.value = given(q), given(k), given(v)
        hidden = torch.zeros(B, N, H * D, dtype=q.dtype, device=q.device)  # only its shape is read
        state = np.random.get_state()  # HF reseeds numpy's global generator at every call
        try:
            out = mod(hidden, band, from_mask, to_mask, blocked, blocked)[0]
        finally:
            np.random.set_state(state)
            mod.query.value = mod.key.value = mod.value.value = None
        return out.view(B, N, H, D)[:, :n].transpose(1, 2)

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """The score entries HF computes, 4·D FLOPs each (scores and their product with V), over
        the padded length N = m·b: the first and last query blocks against all N keys, the second
        and second-last against 4 + r blocks, every middle block against 5 + r (repeats and padded
        keys included, as HF computes them). Below 2r + 5 blocks: full attention, n_q·n_k pairs."""
        b, r = self.block_size, self.num_random_blocks
        m = sparse_blocks(n_q, b, r)
        if m is None:
            return 4 * batch * heads * n_q * n_k * head_dim
        N = m * b
        entries = 2 * b * N + 2 * b * (4 + r) * b + (m - 4) * b * (5 + r) * b
        return 4 * batch * heads * head_dim * entries
