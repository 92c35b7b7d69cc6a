"""Gated linear attention, GLA (Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635).

Per batch row and key/value head, a D x Dv state with a forget gate on each key dimension:

    S_t = diag(a_t) S_{t-1} + k_t v_t^T,   S_{-1} = 0
    o_t = S_t^T (q_t / sqrt(D))
    log a_t = logsigmoid(k_t W + b) / tau      (per dimension; tau = 16, as the paper's gate)

W (D x D) and b (D) are the plugin's learned parameters: the paper projects the layer input to
the gate, but a plugin sees only q, k and v, so the key stands in for it (docs/semantics.md).
The form - log-space gate, 1/16 normaliser, q scaled by 1/sqrt(D), no normalisation of q or k -
follows the paper and flash-linear-attention's reference `naive_recurrent_gla`
(fla-org/flash-linear-attention, fla/ops/gla/naive.py, and fla/layers/gla.py for the gate), which
tests/test_gated_linear.py runs against this plugin. No code is taken from it.

The forward is the chunked form (the paper's "chunkwise parallel" form, §3): chunks of C tokens;
inside a chunk the (C, C) scores carry the per-dimension decay exp(g_r - g_s) (g the running sum
of log a inside the chunk), in sub-chunks of 16 as the paper's secondary chunking: pairs inside a
sub-chunk elementwise, pairs across sub-chunks as matmuls with the decay split at the later
sub-chunk's first row, so that every factor is <= 1 and nothing overflows. Across chunks the
state is carried by a scan over the n / C chunks. O(n·C·D + n·D·Dv) time. The decays are made
for a slice of chunks at a time and, with gradients, recomputed in the backward (checkpointed),
so they never exist for the whole sequence.
Decoding is the recurrence itself: one D x Dv state per key/value head, whatever the context.

A causal recurrence has no non-causal form: `causal=False` is refused (`causal_only`).
Padding: a padded key updates nothing (k, v zero, gate 1), so it is as if it were not there.
The gate parameters are created at the first call (their size is the head dimension), from a
generator seeded with `seed`; `head_dim` creates them when the plugin is built instead, which an
optimizer built before the first call needs (a later call with another head dimension is refused).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels.caches import check_heads, check_step
from ..registry import register_attention
from .base import AttentionBase, check_float, check_int


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 and bfloat16 are computed in float32 (a product of many gates in half precision
    loses the state); float32 and float64 in themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def chunks(x: torch.Tensor, m: int, C: int) -> torch.Tensor:
    """(..., n, F) -> (..., m, C, F), zero-padded at the end up to m·C rows."""
    return F.pad(x, (0, 0, 0, m * C - x.shape[-2])).unflatten(-2, (m, C))


#: decay entries computed at once (C·D·(SUB + C/SUB) per chunk and query head): the chunks are
#: taken in slices of about this many, so the O(n·C·D) decays never exist whole (16 MiB in float32)
SLICE_ELEMENTS = 1 << 22


#: rows of a sub-chunk: inside a chunk, pairs in the same sub-chunk take the per-dimension decay
#: elementwise, pairs across sub-chunks go through matmuls (as fla's chunk_gla splits its chunks)
SUB = 16


def _pairwise(q, k, g):
    """A[r, s] = sum_d q_rd k_sd exp(g_rd - g_sd) for s <= r, else 0, elementwise over (r, s, d):
    q (.., G, c, D), k and g (.., 1, c, D) -> (.., G, c, c). Every factor exp(g_r - g_s) is <= 1."""
    c = q.shape[-2]
    tri = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((g[..., :, None, :] - g[..., None, :, :]).masked_fill(~tri[..., None], float("-inf")))
    return ((decay * k[..., None, :, :]) @ q[..., None]).squeeze(-1)


def _scores(q, k, g):
    """`_pairwise` for chunks q (.., G, m', C, D), k and g (.., 1, m', C, D) -> (.., G, m', C, C),
    in sub-chunks of SUB rows. A pair s < r in different sub-chunks splits its decay at b, the first
    row of r's sub-chunk (s < b <= r): exp(g_r - g_s) = exp(g_r - g_b) · exp(g_b - g_s), both
    factors <= 1, so the pair is a matmul of q_r exp(g_r - g_b) with k_s exp(g_b - g_s)."""
    C = q.shape[-2]
    if C <= SUB or C % SUB:
        return _pairwise(q, k, g)
    n_sub = C // SUB
    qs, ks, gs = (t.unflatten(-2, (n_sub, SUB)) for t in (q, k, g))  # (.., m', n_sub, SUB, D)
    start = gs[..., :1, :]  # (.., 1, m', n_sub, 1, D): g at each sub-chunk's first row
    q_in = qs * torch.exp(gs - start)
    before = torch.arange(C, device=q.device)[None, :] < torch.arange(n_sub, device=q.device)[:, None] * SUB
    k_out = k.unsqueeze(-3) * torch.exp(
        (start - g.unsqueeze(-3)).masked_fill(~before[..., None], float("-inf"))
    )  # (.., 1, m', n_sub, C, D): the keys of earlier sub-chunks, decayed to sub-chunk I's first row
    across = (q_in @ k_out.transpose(-1, -2)).unflatten(-1, (n_sub, SUB))  # (.., G, m', n_sub, SUB, n_sub, SUB)
    own = _pairwise(qs, ks, gs)  # (.., G, m', n_sub, SUB, SUB): pairs inside a sub-chunk
    eye = torch.eye(n_sub, dtype=q.dtype, device=q.device)[:, None, :, None]
    return (across + own.unsqueeze(-2) * eye).flatten(-4, -3).flatten(-2, -1)


def intra_chunk_scores(q, k, g):
    """`_scores` over slices of chunks; with gradients, each slice is recomputed in the backward
    instead of kept (torch.utils.checkpoint), so memory stays O(n·C) for the scores themselves."""
    B, K, G, m, C, D = q.shape
    per_chunk = C * D * (C if C <= SUB or C % SUB else SUB + C // SUB)  # the decays of one chunk
    step = max(1, SLICE_ELEMENTS // (B * K * G * per_chunk))
    if step >= m:
        return _scores(q, k, g)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, g))
    out = []
    for s in range(0, m, step):
        part = (q[:, :, :, s : s + step], k[:, :, :, s : s + step], g[:, :, :, s : s + step])
        if grad:
            out.append(checkpoint(_scores, *part, use_reentrant=False, preserve_rng_state=False))
        else:
            out.append(_scores(*part))
    return torch.cat(out, 3)


def gla_chunked(q, k, v, log_a, chunk: int, state=None):
    """q (B, K, G, n, D) already scaled (G query heads per key/value head); k (B, K, n, D),
    v (B, K, n, Dv), log_a (B, K, n, D) <= 0; `state` (B, K, D, Dv) entering, or None (zeros).
    Returns the outputs (B, K, G, n, Dv) and the state after the last token (B, K, D, Dv)."""
    B, K, G, n, D = q.shape
    Dv = v.shape[-1]
    C = max(1, min(chunk, n))
    m = -(-n // C)
    q = chunks(q, m, C)  # (B, K, G, m, C, D); rows past n are zeros: they change nothing
    k, v = chunks(k, m, C).unsqueeze(2), chunks(v, m, C).unsqueeze(2)  # (B, K, 1, m, C, .)
    g = chunks(log_a, m, C).unsqueeze(2).cumsum(-2)  # (B, K, 1, m, C, D): log decay from the chunk's start
    intra = intra_chunk_scores(q, k, g) @ v  # (B, K, G, m, C, Dv): the pairs inside a chunk
    g_end = g[..., -1:, :]  # (B, K, 1, m, 1, D)
    update = (k * torch.exp(g_end - g)).transpose(-1, -2) @ v  # (B, K, 1, m, D, Dv): a chunk's own keys
    carry = torch.exp(g_end).transpose(-1, -2)  # (B, K, 1, m, D, 1): what the chunk keeps of the state
    q_in = q * torch.exp(g)  # the state entering a chunk, decayed up to row r
    S = q.new_zeros(B, K, 1, D, Dv) if state is None else state.unsqueeze(2)
    inter = []
    # the scan over chunks: n / C steps of D x Dv, on per-chunk tensors unbound once (indexing a
    # chunk out of the whole tensor in the loop costs a whole-tensor gradient per chunk: n^2 / C)
    for qc, keep, own in zip(q_in.unbind(3), carry.unbind(3), update.unbind(3)):
        inter.append(qc @ S)
        S = keep * S + own
    out = intra + torch.stack(inter, 3)
    return out.flatten(3, 4)[:, :, :, :n], S.squeeze(2)


class RecurrentState:
    """The cache of the gated linear family: the state S (B, K, D, Dv), kept in float32 for half
    inputs. Content: B·K·D·Dv·e bytes, whatever the context length."""

    def __init__(self, batch, heads, key_dim, value_dim, dtype, device):
        self.S = torch.zeros(batch, heads, key_dim, value_dim, dtype=work_dtype(dtype), device=device)
        self.length = 0
        self.last_read_bytes = self.last_flops = 0

    def nbytes(self) -> int:
        return self.S.numel() * self.S.element_size()


class GatedRecurrence(AttentionBase):
    """What GLA, DeltaNet and Gated DeltaNet share: the facts, the gate parameters (made from a
    seeded generator, at the first call or from `head_dim`) and the decoding contract."""

    exact = False  # not softmax attention: its error against `full` is reported
    complexity = "O(n·C·D + n·D²)"
    causal_only = True
    supports_cross = False  # a recurrence over one sequence
    supports_decode = True
    supports_gqa = True  # one state per key/value head (gates come from k), read by its query heads

    def __init__(self, seed: int, chunk: int, head_dim: int):
        super().__init__()
        self.seed = check_int("seed", seed, 0)
        self.chunk = check_int("chunk", chunk, 1)
        self.head_dim = check_int("head_dim", head_dim, 0)
        self._dim = 0  # the head dimension the parameters were made for (0: not yet)
        if self.head_dim:
            self._make(self.head_dim, "cpu")

    def initial_parameters(self, d: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _make(self, d: int, device) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        with torch.inference_mode(False), torch.no_grad():  # plain parameters, whatever mode the first call is in
            for name, t in self.initial_parameters(d, gen).items():
                self.register_parameter(name, nn.Parameter(t.to(device=device, dtype=torch.float32)))
        self._dim = d

    def parameters_for(self, d: int, device) -> None:
        if not self._dim:
            self._make(d, device)
        elif d != self._dim:
            raise ValueError(
                f"{type(self).__name__}'s gate parameters are for head_dim {self._dim} "
                f"({'its head_dim option' if self.head_dim else 'its first call'}); got head_dim {d}"
            )

    def _start(self, q, k, v, causal, key_padding_mask):
        self.check_call(q, k, v, causal, key_padding_mask)
        if (empty := self.empty_output(q, k, v)) is not None:
            return empty
        self.parameters_for(q.shape[-1], q.device)
        return None

    def algorithm_flops(self, batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int:
        """Forward matmul FLOPs (2 per multiply-add) of the chunked form as computed, over n padded
        to whole chunks; elementwise work (gates, decays, norms) left out. There is one form: the
        count is the causal one whatever `causal` says (causal=False is refused)."""
        n = max(n_q, n_k)
        C = max(1, min(self.chunk, n))
        return self.chunked_flops(batch, heads, kv_heads, n, -(-n // C) * C, C, head_dim, head_dim)

    # ------------------------------------------------------------------ decoding: the recurrence
    def new_cache(self, batch, heads, head_dim, dtype=torch.float32, device="cpu", max_len: int = 0):
        return RecurrentState(batch, heads, head_dim, head_dim, dtype, device)

    def prefill(self, cache, q, k, v, key_padding_mask=None):
        """The chunked form over the prompt, from the cache's state; the state after it is kept."""
        check_heads(q, k, v)
        if (empty := self._start(q, k, v, True, key_padding_mask)) is not None:
            return empty
        self.last_backend = "chunked"
        out, S = self.run(q, k, v, key_padding_mask, cache.S)
        cache.S = S.detach()
        cache.length += k.shape[2]
        return out.to(q.dtype)

    def step(self, cache, q, k, v):
        check_step(q, k, v)
        self.parameters_for(q.shape[-1], q.device)
        B, H, _, D = q.shape
        K, Dv = k.shape[1], v.shape[-1]
        out = self.step_state(cache, q.to(cache.S.dtype), k.to(cache.S.dtype), v.to(cache.S.dtype))
        cache.length += 1
        cache.last_read_bytes = cache.S.numel() * cache.S.element_size()
        cache.last_flops = 2 * B * H * D * Dv + 6 * B * K * D * Dv  # the read, and the update
        return out.to(q.dtype)


@register_attention("gla_core")
class GatedLinearAttention(GatedRecurrence):
    """GLA: linear attention with a per-dimension forget gate from the key; chunked, causal only."""

    #: option sets that keep it quick and its pattern non-trivial at short lengths (tests, pictures)
    small_options = ({"chunk": 5},)

    def __init__(self, tau: float = 16.0, seed: int = 0, chunk: int = 64, head_dim: int = 0):
        tau = check_float("tau", tau, 0.0, lo_open=True)
        super().__init__(seed, chunk, head_dim)
        self.tau = tau

    def initial_parameters(self, d, gen):
        return {
            "gate_weight": torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d),
            "gate_bias": torch.zeros(d, dtype=torch.float64),
        }

    @staticmethod
    def chunked_flops(B, H, K, n, N, C, D, Dv) -> int:
        """The gate projection k W per key; per query head the chunk scores (per-dimension decays
        inside sub-chunks, matmuls across them), their product with V and the read of the state
        carried in; per key/value head each chunk's own update k^T v."""
        sub = 0 if (C <= SUB or C % SUB) else SUB  # pairs inside a sub-chunk: a second C x SUB x D pass
        return 2 * B * (K * n * D * D + H * N * ((C + sub) * D + C * Dv + D * Dv) + K * N * D * Dv)

    def log_gate(self, k):
        """log a (B, K, n, D) from the keys, in k's dtype."""
        return F.logsigmoid(k @ self.gate_weight.to(k.dtype) + self.gate_bias.to(k.dtype)) / self.tau

    def run(self, q, k, v, key_padding_mask=None, state=None):
        """The chunked form on (B, H, n, D) inputs: outputs (B, H, n, Dv) in the working dtype and the
        final state (B, K, D, Dv)."""
        B, H, n, D = q.shape
        K = k.shape[1]
        wd = work_dtype(q.dtype)
        q, k, v = q.to(wd), k.to(wd), v.to(wd)
        log_a = self.log_gate(k)
        if key_padding_mask is not None:  # a padded key: no update, gate 1 (no gradient reaches it)
            pad = key_padding_mask[:, None, :, None]
            log_a, k, v = log_a.masked_fill(pad, 0.0), k.masked_fill(pad, 0.0), v.masked_fill(pad, 0.0)
        qg = (q * D**-0.5).reshape(B, K, H // K, n, D)
        out, S = gla_chunked(qg, k, v, log_a, self.chunk, None if state is None else state.to(wd))
        return out.reshape(B, H, n, -1), S

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        if (empty := self._start(q, k, v, causal, key_padding_mask)) is not None:
            return empty
        self.last_backend = "chunked"
        return self.run(q, k, v, key_padding_mask)[0].to(q.dtype)

    def step_state(self, cache, q, k, v):
        """One token: S = diag(a) S + k v^T, then o = S^T q / sqrt(D)."""
        B, H, _, D = q.shape
        K = k.shape[1]
        a = torch.exp(self.log_gate(k)).transpose(-1, -2)  # (B, K, D, 1)
        cache.S = a * cache.S + k.transpose(-1, -2) @ v
        return ((q * D**-0.5).reshape(B, K, H // K, D) @ cache.S).reshape(B, H, 1, -1)
