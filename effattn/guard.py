"""The process state a plugin must leave as it found it, saved and put back: shared by the
conformance suite and the measuring process, which both run many plugins in one process."""

from __future__ import annotations

import torch


class TorchState:
    """What a plugin must leave as it found it in a process that measures others after it: the
    thread count, the matmul precision settings (TF32 on CUDA, float32 matmul precision), and the
    torch functions other plugins and the references call."""

    FUNCTIONS = [
        (torch.nn.functional, "scaled_dot_product_attention"),
        (torch.nn.functional, "softmax"),
        (torch, "matmul"),
        (torch, "bmm"),
        (torch, "mm"),
        (torch, "softmax"),
        (torch, "einsum"),
        (torch.Tensor, "__matmul__"),
        (torch.Tensor, "softmax"),
    ]

    def __init__(self):
        self.threads = torch.get_num_threads()
        self.saved = [(obj, name, getattr(obj, name)) for obj, name in self.FUNCTIONS]
        self.flags = self._flags()

    @staticmethod
    def _flags() -> dict:
        return {
            "float32 matmul precision": torch.get_float32_matmul_precision(),
            "TF32 in CUDA matmuls": torch.backends.cuda.matmul.allow_tf32,
            "TF32 in cuDNN": torch.backends.cudnn.allow_tf32,
        }

    @staticmethod
    def _set_flags(flags: dict, now: dict) -> None:
        """Set back only what changed: setting a TF32 flag through its (legacy) attribute after the
        precision through the new API makes torch refuse to report the precision at all."""
        if now["float32 matmul precision"] != flags["float32 matmul precision"]:
            torch.set_float32_matmul_precision(flags["float32 matmul precision"])
        if now["TF32 in CUDA matmuls"] != flags["TF32 in CUDA matmuls"]:
            torch.backends.cuda.matmul.allow_tf32 = flags["TF32 in CUDA matmuls"]
        if now["TF32 in cuDNN"] != flags["TF32 in cuDNN"]:
            torch.backends.cudnn.allow_tf32 = flags["TF32 in cuDNN"]

    def restore(self) -> str | None:
        """Put back what changed; say what it was (None when nothing did)."""
        changed = []
        if torch.get_num_threads() != self.threads:
            changed.append(f"changed torch's thread count from {self.threads} to {torch.get_num_threads()}")
            torch.set_num_threads(self.threads)
        for obj, name, fn in self.saved:
            if getattr(obj, name) is not fn:
                changed.append(f"replaced {getattr(obj, '__name__', obj)}.{name}")
                setattr(obj, name, fn)
        now = self._flags()
        if now != self.flags:  # a plugin that lowers matmul precision would speed up the others and the reference
            changed += [f"changed {k} from {self.flags[k]} to {now[k]}" for k in now if now[k] != self.flags[k]]
            self._set_flags(self.flags, now)
        return "; ".join(changed) or None
