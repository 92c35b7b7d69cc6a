"""Train the shared backbone on a task under a fixed budget and measure what a variant costs in
accuracy. Every knob (steps, batch, learning rate, seed, model size) is recorded in the row."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..model import Transformer, TransformerConfig
from ..spec import Variant
from .base import IGNORE, Task


@dataclass
class TrainSpec:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    conv_kernel: int = 0
    eval_batches: int = 8
    warmup: int = 50
    #: the blocks' residual form. None: as each kind's papers build their blocks - post-norm around
    #: attention (Vaswani et al.; pre-norm measured no better on MQAR), pre-norm around a sequence
    #: mixer (GLA, DeltaNet, Gated DeltaNet and Mamba-2 are all pre-norm models; post-norm kept Gated
    #: DeltaNet from learning the default MQAR: docs/mixers.md)
    norm_first: bool | None = None

    def __post_init__(self):
        import math

        from ..errors import EffattnError

        for k, lo in (
            ("steps", 1),
            ("batch_size", 1),
            ("d_model", 1),
            ("n_layers", 1),
            ("n_heads", 1),
            ("conv_kernel", 0),
            ("eval_batches", 1),
            ("warmup", 0),
        ):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise EffattnError(f"{k} must be an integer >= {lo}, got {v!r}")
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, (int, float))
            or not math.isfinite(self.lr)
            or self.lr <= 0
        ):
            raise EffattnError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.norm_first is not None and not isinstance(self.norm_first, bool):
            raise EffattnError(
                f"norm_first must be true, false or None (by the plugin's kind), got {self.norm_first!r}"
            )
        if self.d_model % self.n_heads:
            raise EffattnError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


def norm_first_for(variant: Variant, spec: TrainSpec) -> bool:
    """The residual form the blocks take for `variant` (TrainSpec.norm_first; None: by its kind)."""
    if spec.norm_first is not None:
        return bool(spec.norm_first)
    from ..registry import get_entry

    return get_entry(variant.name).facts.kind == "mixer"


def build_for_task(task: Task, variant: Variant, spec: TrainSpec) -> Transformer:
    cfg = TransformerConfig(
        vocab_size=task.vocab_size,
        d_model=spec.d_model,
        n_heads=spec.n_heads,
        n_layers=spec.n_layers,
        d_ff=4 * spec.d_model,
        dropout=0.0,
        num_classes=max(task.num_classes, 1),
        attention=variant.name,
        attention_options=variant.options,
        conv_kernel=spec.conv_kernel,
        norm_first=norm_first_for(variant, spec),
    )
    return Transformer(cfg, "decoder" if task.kind == "lm" else "encoder")


def _loss_acc(model, task, tokens, targets, kpm):
    if task.kind == "lm":
        logits = model(tokens)  # (B, n, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
        scored = targets != IGNORE
        correct = (logits.argmax(-1) == targets) & scored
        return loss, int(correct.sum()), int(scored.sum())
    logits = model(tokens, key_padding_mask=kpm)  # (B, classes)
    loss = F.cross_entropy(logits, targets)
    return loss, int((logits.argmax(-1) == targets).sum()), targets.numel()


def train_task(
    task: Task,
    variant: Variant,
    seq_len: int,
    spec: TrainSpec,
    seed: int = 0,
    progress=None,
    keep_model: dict | None = None,
) -> dict:
    """-> {test_accuracy, final_loss, train_time_s, tokens_per_s, ...}."""
    task.check_length(seq_len)
    torch.manual_seed(seed)
    model = build_for_task(task, variant, spec)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / spec.warmup) * max(0.0, 1 - s / spec.steps) if spec.warmup else 1.0
    )
    g_train = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    t0 = time.perf_counter()
    for step in range(spec.steps):
        tokens, targets, kpm = task.batch(spec.batch_size, seq_len, g_train)
        loss, _, _ = _loss_acc(model, task, tokens, targets, kpm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress and (step + 1) % max(1, spec.steps // 10) == 0:
            progress(step + 1, spec.steps, sum(losses[-20:]) / len(losses[-20:]))
    train_time = time.perf_counter() - t0
    model.eval()
    g_test = torch.Generator().manual_seed(10_000 + seed)  # held-out batches, never trained on
    correct = total = 0
    with torch.no_grad():
        for _ in range(spec.eval_batches):
            tokens, targets, kpm = task.batch(spec.batch_size, seq_len, g_test)
            _, c, t = _loss_acc(model, task, tokens, targets, kpm)
            correct, total = correct + c, total + t
    if keep_model is not None:
        keep_model["model"] = model
    tail = losses[-max(1, len(losses) // 20) :]
    return {
        "test_accuracy": correct / max(1, total),
        "final_loss": sum(tail) / len(tail),
        "train_time_s": train_time,
        "tokens_per_s": spec.steps * spec.batch_size * seq_len / train_time,
        "train_spec": asdict(spec),  # as asked (norm_first None: by kind), part of the run's identity
        "norm_first": norm_first_for(variant, spec),  # the blocks' form this run trained with
        "seed": seed,
        "task": task.name,
        "task_options": task.options(),
    }
