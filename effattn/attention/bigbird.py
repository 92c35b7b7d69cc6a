"""BigBird block-sparse attention (Zaheer et al. 2020, arXiv:2007.14062), ITC form.

With I = i // b, J = j // b and m = ceil(n / b) blocks, (i, j) attends when
  |I - J| <= 1,  or I or J is the first or last block,  or J is one of the r random blocks of row I
(random blocks drawn, per row, from blocks not already attended, fixed by `seed`). Cost
O(n * (3 + 2 + r) * b) plus the two global block rows, O(2 b n).

Interior block rows gather key blocks [0, m-1, I-1, I, I+1, random...]: all distinct, so one
group with no mask at all (or only the ragged tail of the last block masked).
"""

from __future__ import annotations

import torch

from ..kernels import chunked
from ..kernels.caches import KVDecoding
from ..registry import register_attention
from .base import PatternAttention, check_int


@register_attention("bigbird")
class BigBirdAttention(KVDecoding, PatternAttention):
    """BigBird: sliding blocks + first/last global blocks + r random blocks per block row.

    Decoding: the newest token of a prefix of n tokens is in block ceil(n / b) - 1, the last
    block, which is global, so it attends every earlier token: a step is full attention over the
    whole cache (and the prefill is BigBird's causal forward over the prompt)."""

    complexity = "O(n·b·(5+r))"
    supports_cross = False  # the block grid is defined on one sequence
    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures;
    #: the first is drawn: at n = 128, blocks of 8 with one random block per row leave most of the
    #: 16 x 16 block grid empty, where 3 random blocks at n = 64 attended every block)
    small_options = (
        {"block_size": 8, "num_random_blocks": 1},
        {"block_size": 8, "num_random_blocks": 2},
        {"block_size": 5, "num_random_blocks": 1, "seed": 3},
        {"block_size": 16, "num_random_blocks": 0},
    )

    def __init__(self, block_size: int = 64, num_random_blocks: int = 3, seed: int = 0, backend: str = "auto"):
        super().__init__(backend)
        self.block_size = check_int("block_size", block_size, 1)
        self.num_random_blocks = check_int("num_random_blocks", num_random_blocks, 0)
        self.seed = check_int("seed", seed, 0)
        self._random: dict[int, list[list[int]]] = {}

    def random_blocks(self, m: int) -> list[list[int]]:
        """Row I's random key blocks for an m-block sequence (empty for the global rows)."""
        if m not in self._random:
            g = torch.Generator().manual_seed(self.seed)
            rows = []
            for I in range(m):
                if I in (0, m - 1):
                    rows.append([])
                    continue
                taken = {0, m - 1, I - 1, I, I + 1}
                cands = [J for J in range(m) if J not in taken]
                pick = torch.randperm(len(cands), generator=g)[: self.num_random_blocks]
                rows.append(sorted(cands[p] for p in pick.tolist()))
            self._random[m] = rows
        return self._random[m]

    def _block_table(self, m: int) -> torch.Tensor:
        t = torch.zeros(m, m, dtype=torch.bool)
        for I, js in enumerate(self.random_blocks(m)):
            t[I, js] = True
        return t

    def pair_mask(self, i, j, causal: bool, n: int | None = None, table=None):
        b = self.block_size
        if n is None:
            raise ValueError("bigbird.pair_mask needs the sequence length n (the block grid depends on it)")
        m = -(-n // b)
        table = self._block_table(m) if table is None else table
        I, J = i // b, j // b
        allowed = ((I - J).abs() <= 1) | (I == 0) | (I == m - 1) | (J == 0) | (J == m - 1) | table[I, J]
        return allowed & (j <= i) if causal else allowed

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        return self.pair_mask(torch.arange(n_q)[:, None], torch.arange(n_k)[None, :], causal, n=n_k)

    def _flex_pair_mask(self, n_q: int, n_k: int, causal: bool, device):
        table = self._block_table(-(-n_k // self.block_size)).to(device)
        return lambda i, j: self.pair_mask(i, j, causal, n_k, table)

    def _plan(self, n: int, _n_k: int, causal: bool) -> chunked.Plan:
        b = self.block_size
        m = -(-n // b)
        A = chunked.arange
        blk = lambda J: A(J * b, min(n, (J + 1) * b))
        rand = self.random_blocks(m)
        chunks = []
        for I in range(m):
            if I in (0, m - 1):
                keys = A(0, min(n, (I + 1) * b) if causal else n)
            else:
                order = [0, I - 1, I] if causal else [0, m - 1, I - 1, I, I + 1]
                order += [J for J in rand[I] if not causal or J < I]
                if causal:  # keep the diagonal block last so that its triangle sits in one place
                    order = [0] + sorted(set(order) - {0, I - 1, I}) + [I - 1, I]
                seen, uniq = set(), []
                for J in order:
                    if J not in seen:
                        seen.add(J), uniq.append(J)
                keys = torch.cat([blk(J) for J in uniq])
            chunks.append((blk(I), keys))
        table = self._block_table(m)
        return chunked.build_plan(chunks, lambda i, j: self.pair_mask(i, j, causal, n, table))
