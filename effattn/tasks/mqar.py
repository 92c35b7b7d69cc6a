"""Multi-query associative recall (Arora et al. 2023, "Zoology", arXiv:2312.04927).

Key-value pairs come first (k1 v1 k2 v2 ... kP vP, keys from the lower half of the vocabulary,
values from the upper half), then each key is asked again at a random later position; the target
at a query position is that key's value. Other positions hold token 0 and are not scored.
"""

from __future__ import annotations

import torch

from ..errors import OptionError
from ..options import check_int
from .base import IGNORE, Task, register_task


@register_task("mqar")
class MQAR(Task):
    kind = "lm"

    def __init__(self, num_pairs: int = 8, vocab: int = 128):
        self.num_pairs = check_int("num_pairs", num_pairs, 1)
        self.vocab = check_int("vocab", vocab, 8)
        if self.num_pairs > self.vocab // 2 - 1:
            raise OptionError(f"option num_pairs must be <= vocab/2 - 1 = {self.vocab // 2 - 1}, got {num_pairs}")
        self.vocab_size = self.vocab
        self.num_classes = self.vocab

    def check_length(self, seq_len: int) -> None:
        if seq_len < 3 * self.num_pairs:
            raise OptionError(f"mqar with {self.num_pairs} pairs needs seq_len >= {3 * self.num_pairs}, got {seq_len}")

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator):
        self.check_length(seq_len)
        P, half = self.num_pairs, self.vocab // 2
        tokens = torch.zeros(batch_size, seq_len, dtype=torch.long)
        targets = torch.full((batch_size, seq_len), IGNORE, dtype=torch.long)
        for b in range(batch_size):
            keys = torch.randperm(half - 1, generator=generator)[:P] + 1  # 1 .. half-1
            values = torch.randint(half, self.vocab, (P,), generator=generator)
            tokens[b, 0 : 2 * P : 2], tokens[b, 1 : 2 * P : 2] = keys, values
            slots = torch.randperm(seq_len - 2 * P, generator=generator)[:P] + 2 * P  # query positions
            order = torch.randperm(P, generator=generator)
            tokens[b, slots] = keys[order]
            targets[b, slots] = values[order]
        return tokens, targets, None
