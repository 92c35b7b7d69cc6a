"""What a point's output must be before the point may be called `ok`.

The attention core's output must have shape (B, H, n_q, D_v), the input's dtype and device, and
finite values for finite inputs; under forward + backward the gradients reaching q, k and v must
exist, match their tensors' shape and dtype, and be finite. The checks watch the core through
hooks, so they hold at every level (attention, layer, model): a plugin returning (B, n, H, D)
inside a layer that happens to reshape it anyway is still caught.
"""

from __future__ import annotations

import torch


def _finite(t: torch.Tensor) -> bool:
    # max and min propagate NaN and see inf, and allocate nothing of the tensor's size (this runs
    # inside the memory-profiled first call). A float64 sum was tried first: it casts the whole
    # tensor, which added twice the output's size to the first call's measured peak.
    return t.numel() == 0 or bool(torch.isfinite(t.amax()) and torch.isfinite(t.amin()))


def _count_bad(t: torch.Tensor) -> str:
    bad = int((~torch.isfinite(t)).sum())
    nan = int(torch.isnan(t).sum())
    return f"{bad} of {t.numel()} values non-finite ({nan} NaN)"


def check_output(out, q: torch.Tensor, v: torch.Tensor, what: str = "output") -> str | None:
    """None when `out` is a valid attention output for q and v, else the reason."""
    if not isinstance(out, torch.Tensor):
        return f"{what} is a {type(out).__name__}, not a tensor"
    want = (*q.shape[:3], v.shape[-1])
    if tuple(out.shape) != want:
        return f"{what} shape {tuple(out.shape)} != {want}"
    if out.dtype != q.dtype:
        return (
            f"{what} dtype {str(out.dtype).replace('torch.', '')} != the input's {str(q.dtype).replace('torch.', '')}"
        )
    if out.device != q.device:
        return f"{what} on {out.device}, inputs on {q.device}"
    if not _finite(out) and all(_finite(t) for t in (q, v)):
        return f"{what} is not finite for finite inputs: {_count_bad(out)}"
    return None


def check_grad(grad, shape: tuple, dtype: torch.dtype, name: str) -> str | None:
    if grad is None:
        return f"no gradient reached {name}"
    if tuple(grad.shape) != tuple(shape):
        return f"gradient of {name} has shape {tuple(grad.shape)} != {tuple(shape)}"
    if grad.dtype != dtype:
        return f"gradient of {name} has dtype {grad.dtype} != {dtype}"
    if not _finite(grad):
        return f"gradient of {name} is not finite: {_count_bad(grad)}"
    return None


class CoreWatch:
    """Hooks on an attention core that validate what it returns and, under autograd, what flows
    back into its q, k and v. Use around one call; `problems` lists what was wrong."""

    def __init__(self, *cores: torch.nn.Module):
        self.cores = cores
        self.problems: list[str] = []
        self.calls = 0
        self._expect: dict[str, int] = {}  # gradient hooks registered, per input name
        self._seen: dict[str, int] = {}
        self._handles: list = []

    def __enter__(self) -> CoreWatch:
        for core in self.cores:
            self._handles.append(core.register_forward_hook(self._on_forward, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _note(self, problem: str | None) -> None:
        if problem and problem not in self.problems:
            self.problems.append(problem)

    def _on_forward(self, module, args, kwargs, out):
        self.calls += 1
        qkv = list(args[:3]) + [kwargs.get(k) for k in ("q", "k", "v")[len(args[:3]) :]]
        if len(args) == 1 and isinstance(args[0], torch.Tensor) and args[0].dim() == 3:
            # a sequence mixer, called with the layer input x (B, n, d_model): out is x's shape
            x = args[0]
            self._note(check_output(out, x.unsqueeze(1), x.unsqueeze(1), "mixer output")
                       if not isinstance(out, torch.Tensor) or out.dim() != 3
                       else check_output(out.unsqueeze(1), x.unsqueeze(1), x.unsqueeze(1), "mixer output"))  # fmt: skip
            return
        if len(qkv) < 3 or not all(isinstance(t, torch.Tensor) for t in qkv[:3]):
            return
        q, k, v = qkv[:3]
        self._note(check_output(out, q, v))
        if torch.is_grad_enabled():
            for name, t in zip("qkv", (q, k, v)):
                if t.requires_grad:
                    self._expect[name] = self._expect.get(name, 0) + 1
                    self._handles.append(t.register_hook(self._grad_hook(name, t)))

    def _grad_hook(self, name, t):
        shape, dtype = tuple(t.shape), t.dtype

        def hook(grad):
            self._seen[name] = self._seen.get(name, 0) + 1
            self._note(check_grad(grad, shape, dtype, name))

        return hook

    def check_backward(self) -> None:
        """After backward: every q, k, v that required a gradient must have received one."""
        for name, n in self._expect.items():
            if self._seen.get(name, 0) < n:
                self._note(f"no gradient reached {name}")

    @property
    def problem(self) -> str | None:
        if not self.calls:
            return None
        return "; ".join(self.problems) if self.problems else None
