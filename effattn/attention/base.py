"""What every built-in plugin shares: declared facts and option checks (`AttentionBase`, with the
mask conventions of docs/semantics.md in `effattn.kernels.masks`), and the base of the exact
pattern plugins (`PatternAttention`): a pattern stated as `pair_mask`, laid out as chunk plans for
the plain-PyTorch engine (`effattn.kernels.chunked`), merged by log-sum-exp where it is cut into
pieces (`effattn.kernels.merge`), or handed to FlexAttention or a dense mask (the backends)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedError
from ..kernels import merge
from ..kernels.chunked import Plan, PlanCache, folds, run_plan
from ..kernels.masks import combine_masks, dense_attention
from ..options import check_choice, check_float, check_int  # noqa: F401  (re-exported: plugins import them from here)


class AttentionBase(nn.Module):
    """Base for built-in plugins. Third-party plugins need not subclass it: the registry reads the
    same facts, with defaults, from any class (see `effattn.registry.Facts`)."""

    exact: bool = True
    complexity: str = "O(n^2)"
    supports_causal: bool = True
    causal_only: bool = False
    supports_padding: bool = True
    supports_cross: bool = True
    supports_decode: bool = False
    supports_gqa: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")

    #: which computation path the last forward took (recorded in results).
    last_backend: str = "default"

    def check_call(self, q, k, v, causal, key_padding_mask) -> None:
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__} {causal!r}")
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            raise ValueError("q, k, v must be (batch, heads, seq, head_dim)")
        if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
            raise ValueError(f"incompatible shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
        if q.shape[1] != k.shape[1]:
            H, K = q.shape[1], k.shape[1]
            if K < 1 or H % K:
                raise ValueError(f"key/value heads ({K}) must divide query heads ({H})")
            if not self.supports_gqa:
                raise UnsupportedError(
                    f"{type(self).__name__} does not support grouped-query heads ({H} query heads, {K} key/value heads)"
                )
        if causal and not self.supports_causal:
            raise UnsupportedError(f"{type(self).__name__} does not support causal attention")
        if not causal and self.causal_only:
            raise UnsupportedError(
                f"{type(self).__name__} computes only the causal form (a recurrence over the sequence, "
                "each token's output from the tokens up to it): call it with causal=True"
            )
        if key_padding_mask is not None:
            if not self.supports_padding:
                raise UnsupportedError(f"{type(self).__name__} does not support key_padding_mask")
            if key_padding_mask.shape != (k.shape[0], k.shape[2]) or key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be bool (batch, n_k) = ({k.shape[0]}, {k.shape[2]}), "
                    f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
                )
        if q.shape[2] != k.shape[2] and not self.supports_cross:
            raise UnsupportedError(f"{type(self).__name__} does not support n_q != n_k (cross-attention)")

    @staticmethod
    def empty_output(q, k, v):
        """The output when there is no query (n_q = 0: an empty tensor) or no key (n_k = 0: every
        row has no key, so zeros), or None when both are present. It stays on the autograd graph,
        so forward + backward of an empty call works (with zero gradients)."""
        if q.shape[2] and k.shape[2]:
            return None
        out = q.new_zeros(*q.shape[:3], v.shape[-1])
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            out = out + 0 * (q.sum() + k.sum() + v.sum())
        return out


# --------------------------------------------------------------------- exact pattern plugins
BACKENDS = ("auto", "chunked", "dense", "flex")
#: the chunked backend runs a pattern as ONE masked SDPA call over its dense (n_q, n_k) mask when
#: its chunks would compute at least this fraction of all n_q x n_k pairs anyway (short sequences,
#: where a window covers nearly every pair and the chunks' extra calls are the cost: fwd+bwd of
#: sliding_window(64) at n = 128, batch 32, took 1.8x as long as full), and the mask has at most
#: DENSE_MAX_PAIRS elements. None: never (tests that exercise the chunk paths at small n).
DENSE_ABOVE: float | None = 0.5
DENSE_MAX_PAIRS = 1 << 22
#: what FlexAttention's Triton kernels compile for (float64 fails inside Triton's dot: found on an H200)
FLEX_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class PatternAttention(AttentionBase):
    """Base of the exact pattern plugins: `pair_mask(i, j, causal)` states the pattern, `_plan`
    lays out chunks for the engine.

    backend: `chunked` (plain PyTorch; forward and backward everywhere), `flex` (compiled
    FlexAttention; CUDA forward+backward, CPU forward only), `dense` (masked SDPA over
    `dense_mask`: the labelled simulated-sparsity baseline, O(n^2)), `auto` (flex on CUDA, chunked
    on CPU, where flex compiles for seconds per shape and has no backward; chunked for float64 on
    CUDA, which FlexAttention's kernels do not take)."""

    complexity = "O(nnz)"
    supports_gqa = True

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = check_choice("backend", backend, BACKENDS)
        self._plans = PlanCache(self._piece_plans)
        self._flex_masks: dict = {}
        self._dense_masks: dict = {}

    def pair_mask(self, i, j, causal: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def _plan(self, n_q: int, n_k: int, causal: bool) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def _piece_plans(self, n_q: int, n_k: int, causal: bool, training: bool = False) -> list[Plan]:
        """The pattern as plans whose pairs are disjoint per row, merged by log-sum-exp
        (`effattn.kernels.merge`); one plan (one softmax per chunk, no merge) unless a plugin cuts it. A plugin
        may lay out a call that needs gradients (`training`) differently: the backward pays for
        every key a chunk repeats (its gradient is zero-filled and added back per chunk)."""
        return [self._plan(n_q, n_k, causal)]

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        return self.pair_mask(torch.arange(n_q)[:, None], torch.arange(n_k)[None, :], causal)

    def _chunked(self, q, k, v, causal, key_padding_mask):
        n_q, n_k = q.shape[2], k.shape[2]
        training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        plans = self._plans(n_q, n_k, causal, training)
        if DENSE_ABOVE is not None and n_q * n_k <= DENSE_MAX_PAIRS:
            if sum(p.computed_pairs for p in plans) >= DENSE_ABOVE * n_q * n_k:
                self.last_backend = "chunked (as one dense call: the chunks cover most pairs)"
                key = (n_q, n_k, causal, str(q.device))
                if key not in self._dense_masks:
                    if len(self._dense_masks) >= 4:
                        self._dense_masks.pop(next(iter(self._dense_masks)))
                    self._dense_masks[key] = self.dense_mask(n_q, n_k, causal).to(q.device)
                return dense_attention(q, k, v, combine_masks(self._dense_masks[key], key_padding_mask))
        B, H = q.shape[:2]
        if len(plans) == 1 and not (merge.kernel_ok(q) and not any(folds(g, B, H) for g in plans[0].groups)):
            self.last_backend = "chunked-sdpa"
            return run_plan(plans[0], q, k, v, key_padding_mask)
        if len(plans) == 1:
            # one plan through the flash kernel with the merge module's backward, which adds each
            # group's gradient straight into dq, dk, dv: autograd's backward of the per-element
            # selects, slices and unfold views zero-filled a full-size tensor for each (33 fills,
            # a third of a window's fwd+bwd at 8k)
            self.last_backend = "chunked-flash"
            return merge.run_pieces(plans, q, k, v, key_padding_mask)
        self.last_backend = "chunked-pieces"
        return merge.run_pieces(plans, q, k, v, key_padding_mask)

    def _flex_pair_mask(self, n_q: int, n_k: int, causal: bool, device):
        return lambda i, j: self.pair_mask(i, j, causal)

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        backend = self.backend
        if backend == "auto":
            from ..kernels.flex import flex_available

            backend = (
                "flex"
                if q.device.type == "cuda" and q.dtype in FLEX_CUDA_DTYPES and flex_available() is None
                else "chunked"
            )
        if backend == "flex":
            if q.device.type == "cuda" and q.dtype not in FLEX_CUDA_DTYPES:
                raise UnsupportedError(
                    f"backend 'flex': FlexAttention's CUDA kernels take float16, bfloat16 and "
                    f"float32, not {str(q.dtype).replace('torch.', '')}; use backend='chunked'"
                )
            from ..kernels.flex import flex_forward

            self.last_backend = "flex"
            pm = self._flex_pair_mask(q.shape[2], k.shape[2], causal, q.device)
            return flex_forward(pm, q, k, v, causal, key_padding_mask, self._flex_masks)
        if backend == "dense":
            self.last_backend = "dense (simulated sparsity)"
            pattern = self.dense_mask(q.shape[2], k.shape[2], causal).to(q.device)
            return dense_attention(q, k, v, combine_masks(pattern, key_padding_mask))
        return self._chunked(q, k, v, causal, key_padding_mask)

    def nnz(self, n_q: int, n_k: int, causal: bool = False) -> int:
        """Attended pairs, from the plan (no n x n mask)."""
        if n_q == 0 or n_k == 0:
            return 0
        return sum(p.pairs for p in self._plans(n_q, n_k, causal))

    def min_memory_bytes(self, batch, heads, n_q, n_k, head_dim, element_size, causal, grad) -> int:
        """The `dense` backend builds the (n_q, n_k) boolean pattern; the others stay O(nnz)."""
        return n_q * n_k if self.backend == "dense" else 0
