"""Retrieval at a distance: where exactly does a window stop seeing?

Noise tokens, a needle (marker token, then a value token) placed `distance` positions before the
end, and a final query marker; the target at the last position is the value. A causal decoder
with a window w per layer sees at most layers * w back, so accuracy falls to chance once the
needle is farther than that, unless global tokens or random blocks reach it.
"""

from __future__ import annotations

import torch

from ..errors import OptionError
from ..options import check_int
from .base import IGNORE, Task, register_task

NEEDLE, QUERY = 1, 2


@register_task("retrieval_distance")
class RetrievalDistance(Task):
    kind = "lm"

    def __init__(self, distance: int = 64, num_values: int = 16, noise_vocab: int = 32):
        self.distance = check_int("distance", distance, 2)
        self.num_values = check_int("num_values", num_values, 2)
        self.noise_vocab = check_int("noise_vocab", noise_vocab, 1)
        self.vocab_size = 3 + self.noise_vocab + self.num_values
        self.num_classes = self.vocab_size

    def check_length(self, seq_len: int) -> None:
        if seq_len < self.distance + 1:
            raise OptionError(
                f"retrieval_distance with distance {self.distance} needs seq_len > {self.distance}, got {seq_len}"
            )

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator):
        self.check_length(seq_len)
        tokens = torch.randint(3, 3 + self.noise_vocab, (batch_size, seq_len), generator=generator)
        values = torch.randint(3 + self.noise_vocab, self.vocab_size, (batch_size,), generator=generator)
        pos = seq_len - 1 - self.distance  # the marker; the value follows it
        tokens[:, pos] = NEEDLE
        tokens[:, pos + 1] = values
        tokens[:, -1] = QUERY
        targets = torch.full((batch_size, seq_len), IGNORE, dtype=torch.long)
        targets[:, -1] = values
        return tokens, targets, None
