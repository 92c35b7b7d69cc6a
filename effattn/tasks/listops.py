"""ListOps (Nangia & Bowman 2018; Long Range Arena, Tay et al. 2021): nested MAX, MIN, MED and
SUM_MOD expressions over digits; classify the value, 0-9. Sequences are padded to seq_len.

Tokens: 0 pad, 1-10 digits 0-9, 11 MAX, 12 MIN, 13 MED, 14 SM (sum mod 10), 15 "]".
An operator token opens its bracket, as in LRA's "[MAX 2 9 ]".
"""

from __future__ import annotations

import statistics

import torch

from ..errors import OptionError
from ..options import check_int
from .base import Task, register_task

PAD, CLOSE = 0, 15
OPS = {11: "MAX", 12: "MIN", 13: "MED", 14: "SM"}


def apply_op(op: int, args: list[int]) -> int:
    if op == 11:
        return max(args)
    if op == 12:
        return min(args)
    if op == 13:
        return int(statistics.median_low(args))
    return sum(args) % 10


def detokenize(tokens) -> str:
    names = {**{d + 1: str(d) for d in range(10)}, **{k: f"[{v}" for k, v in OPS.items()}, CLOSE: "]"}
    return " ".join(names[int(t)] for t in tokens if int(t) != PAD)


@register_task("listops")
class ListOps(Task):
    kind = "cls"
    vocab_size = 16
    num_classes = 10

    def __init__(self, max_depth: int = 4, max_args: int = 5):
        self.max_depth = check_int("max_depth", max_depth, 1)
        self.max_args = check_int("max_args", max_args, 2)

    def check_length(self, seq_len: int) -> None:
        if seq_len < 4:
            raise OptionError(f"listops needs seq_len >= 4, got {seq_len}")

    def _expr(self, depth: int, budget: int, g: torch.Generator):
        """-> (tokens, value). Leaves are digits; a node is OP args... ]."""
        if depth >= self.max_depth or budget < 4 or torch.rand((), generator=g) < 0.25 * depth / self.max_depth:
            d = int(torch.randint(0, 10, (), generator=g))
            return [d + 1], d
        op = int(torch.randint(11, 15, (), generator=g))
        n_args = int(torch.randint(2, self.max_args + 1, (), generator=g))
        toks, vals, left = [op], [], budget - 2
        for _ in range(n_args):
            if left < 1:
                break
            t, v = self._expr(depth + 1, left // 2 if left > 8 else left, g)
            if len(t) > left:
                t, v = t[:0] + [1 + (v % 10)], v % 10
            toks += t
            vals.append(v)
            left -= len(t)
        if not vals:
            vals, toks = [0], toks + [1]
        return toks + [CLOSE], apply_op(op, vals)

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator):
        self.check_length(seq_len)
        tokens = torch.full((batch_size, seq_len), PAD, dtype=torch.long)
        labels = torch.zeros(batch_size, dtype=torch.long)
        for b in range(batch_size):
            toks, val = self._expr(0, seq_len, generator)
            tokens[b, : len(toks)] = torch.tensor(toks)
            labels[b] = val
        return tokens, labels, tokens == PAD
