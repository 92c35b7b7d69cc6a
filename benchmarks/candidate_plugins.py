"""The three candidate plugins of benchmarks/candidates.py: Reformer LSH, routing and Sinkhorn
attention, registered at run time (`register`), not built-in plugins.

The candidates, each a wrapper of the library's attention core (its own projections, positional
embeddings, local-attention heads, aux losses and reversible layers left out), fed effattn's
(B, H, n, D) q, k, v with B·H merged into the library's batch:

- `reformer_lsh` (reformer_pytorch `LSHAttention`): Reformer shares queries and keys: one tensor
  `qk` is hashed, used as the query, and its L2-normalised copy as the key; a query attends itself
  only when nothing else is in its chunk. This is a property of the method. The plugin feeds the
  shared `qk` = k (option `qk=q` uses q instead); the other of q, k is not used at all. v is v.
  The length must be a multiple of 2·bucket_size: the plugin pads with zeros and masks the padding
  (`input_mask`). The random rotations are drawn from torch's global generator at every call; the
  plugin draws them inside `torch.random.fork_rng`, seeded from `seed`, so every call (and every
  plugin with the same seed) hashes alike and the caller's generator is left as it was.
- `routing` (routing_transformer `KmeansAttention`): queries and keys are routed to `num_clusters` =
  round(n / window_size) k-means centroids (normalised, per head), each centroid takes its top
  ceil(n / num_clusters) queries and keys, attention runs inside each cluster, and a query's outputs
  are averaged over the clusters that took it; a query no cluster took outputs **zeros** (a property
  of the method's balanced top-k routing). The centroids are initialised (10 k-means iterations,
  a `randperm` under a seeded `fork_rng`) from the first input seen at each (heads, head_dim,
  clusters), and in training they move by the library's EMA after each call (what its
  `update_kmeans_on_backwards` hook does). The commitment loss is discarded (effattn's backbone has
  no auxiliary-loss channel). So outputs depend on what the module saw before: a stateful core.
- `sinkhorn` (sinkhorn_transformer `SinkhornAttention`): queries in blocks of bucket_size attend
  their own block and the block the sort net picks (bucket means, top-1 "differentiable top-k";
  with `non_permutative=False` the gumbel-Sinkhorn permutation instead, drawn under a seeded
  `fork_rng`). The length must be a multiple of bucket_size: the plugin pads with zeros and masks.
  Library quirk, kept as it is: for the picked block it uses that block's *keys* as values
  (`b_v_r = b_k_r.reshape(...)` in 0.11.4).

None declares padding or cross-attention; causal: see `CAUSAL` below (its evidence).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import effattn
from effattn.options import check_choice, check_int

PKG = {"reformer_lsh": "reformer_pytorch", "routing": "routing_transformer", "sinkhorn": "sinkhorn_transformer"}
PIP = {
    "reformer_lsh": "reformer_pytorch axial-positional-embedding product-key-memory",
    "routing": "routing_transformer product-key-memory mixture-of-experts",
    "sinkhorn": "sinkhorn_transformer axial-positional-embedding product-key-memory",
}


def why_not(name: str) -> str | None:
    try:
        __import__(PKG[name])
    except Exception as e:  # noqa: BLE001 - any import failure (a missing dep too) is the reason
        return f"unavailable: pip install --no-deps {PIP[name]} ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


def _seeded(seed: int, device: torch.device):
    devices = [device] if device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)
    return ctx


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if x.shape[-2] == n else torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[-2]))


class _Candidate(nn.Module):
    exact = False
    supports_causal = False
    supports_padding = False
    supports_cross = False
    dtypes = ("float32", "float64")
    _name = ""

    @classmethod
    def availability(cls, device="cpu"):
        return why_not(cls._name)

    def _check(self, q, k, v, causal, key_padding_mask, same_v_dim: bool = False):
        """The call's checks; returns the empty output for n = 0, else None."""
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        if causal and not self.supports_causal:
            raise effattn.UnsupportedError(f"{self._name} is not offered in causal mode")
        if key_padding_mask is not None:
            raise effattn.UnsupportedError(f"{self._name} does not support key_padding_mask")
        if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            raise effattn.UnsupportedError(f"{self._name} needs self-attention q, k, v of one shape (B, H, n, D)")
        if q.shape[2] == 0:
            return q.new_zeros(*q.shape[:3], v.shape[-1])
        if same_v_dim and v.shape[-1] != q.shape[-1]:
            raise effattn.UnsupportedError(f"{self._name} needs the value dimension equal to head_dim")
        return None


class ReformerLSH(_Candidate):
    """Reformer LSH attention (reformer_pytorch LSHAttention): shared-QK, hashed into buckets, chunked."""

    complexity = "O(n·h·b)"
    wraps = ("reformer_pytorch",)
    _name = "reformer_lsh"

    def __init__(self, bucket_size: int = 64, n_hashes: int = 8, qk: str = "k", seed: int = 0):
        super().__init__()
        self.bucket_size = check_int("bucket_size", bucket_size, 1)
        self.n_hashes = check_int("n_hashes", n_hashes, 1)
        self.qk = check_choice("qk", qk, ("q", "k"))
        self.seed = check_int("seed", seed, 0)
        from reformer_pytorch import LSHAttention

        self._lib = [LSHAttention(bucket_size=self.bucket_size, n_hashes=self.n_hashes, causal=False).eval()]

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if (empty := self._check(q, k, v, causal, key_padding_mask)) is not None:
            return empty
        b, h, n, d = q.shape
        m = math.ceil(n / (2 * self.bucket_size)) * 2 * self.bucket_size
        # q (or k) is unused by the shared-QK method: its gradient is exactly zero, given as such (effattn
        # requires a gradient to reach q, k and v under fwdbwd; the n·d multiply costs nothing next to LSH)
        shared = k + 0 * q if self.qk == "k" else q + 0 * k
        shared = shared.reshape(b * h, n, d)
        vv = v.reshape(b * h, n, v.shape[-1])
        real = torch.zeros(b * h, m, dtype=torch.bool, device=q.device)
        real[:, :n] = True
        with _seeded(self.seed, q.device):
            torch.manual_seed(self.seed)
            out, _, _ = self._lib[0](_pad_to(shared, m), _pad_to(vv, m), input_mask=real if m != n else None)
        return out[:, :n].reshape(b, h, n, -1).to(q.dtype)


class Routing(_Candidate):
    """Routing attention (routing_transformer KmeansAttention): online k-means clusters, attention inside each."""

    complexity = "O(n·w)"
    wraps = ("routing_transformer",)
    _name = "routing"

    def __init__(self, window_size: int = 64, seed: int = 0):
        super().__init__()
        self.window_size = check_int("window_size", window_size, 1)
        self.seed = check_int("seed", seed, 0)
        self._libs: dict = {}  # (heads, head_dim, clusters, device) -> KmeansAttention; state, not parameters

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if (empty := self._check(q, k, v, causal, key_padding_mask, same_v_dim=True)) is not None:
            return empty
        b, h, n, d = q.shape
        nc = max(1, round(n / self.window_size))
        wsz = math.ceil(n / nc)
        key = (h, d, nc, str(q.device), q.dtype)
        from routing_transformer import KmeansAttention

        with _seeded(self.seed, q.device):
            torch.manual_seed(self.seed)
            lib = self._libs.get(key)
            if lib is None:
                lib = KmeansAttention(nc, wsz, h, d, causal=False).to(device=q.device, dtype=q.dtype)
                self._libs[key] = lib
            lib.window_size = wsz
            lib.train(self.training)
            out, _aux = lib(q, k, v)
            if self.training and lib.kmeans.new_means is not None:
                lib.kmeans.update()
        return out.to(q.dtype)


class Sinkhorn(_Candidate):
    """Sinkhorn attention (sinkhorn_transformer SinkhornAttention): own block plus one block picked by a sort net."""

    complexity = "O(n·b)"
    wraps = ("sinkhorn_transformer",)
    _name = "sinkhorn"

    def __init__(self, bucket_size: int = 64, non_permutative: bool = True, seed: int = 0):
        super().__init__()
        self.bucket_size = check_int("bucket_size", bucket_size, 1)
        if not isinstance(non_permutative, bool):
            raise ValueError(f"option non_permutative must be true or false, got {non_permutative!r}")
        self.non_permutative = non_permutative
        self.seed = check_int("seed", seed, 0)
        self._libs: dict = {}  # (heads, head_dim) -> SinkhornAttention (no parameters with its default sort net)

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if (empty := self._check(q, k, v, causal, key_padding_mask, same_v_dim=True)) is not None:
            return empty
        b, h, n, d = q.shape
        m = math.ceil(n / self.bucket_size) * self.bucket_size
        from sinkhorn_transformer.sinkhorn_transformer import SinkhornAttention

        lib = self._libs.get((h, d))
        if lib is None:
            lib = SinkhornAttention(
                self.bucket_size, d * h, d, h, max_seq_len=m, non_permutative=self.non_permutative
            ).eval()
            self._libs[(h, d)] = lib
        mask = None
        if m != n:
            mask = torch.zeros(b, m, dtype=torch.bool, device=q.device)
            mask[:, :n] = True
        with _seeded(self.seed, q.device):
            torch.manual_seed(self.seed)
            out = lib(_pad_to(q, m), _pad_to(k, m), _pad_to(v, m), q_mask=mask, kv_mask=mask)
        return out[:, :, :n].to(q.dtype)


PLUGINS = {"reformer_lsh": ReformerLSH, "routing": Routing, "sinkhorn": Sinkhorn}
#: why none is offered in causal mode. Measured on the raw libraries (n = 64, d = 16): changing only the
#: last token's q/k moved earlier outputs by up to 0.57 (LSHAttention(causal=True), bucket 8, 2 hashes) and
#: 0.96 (KmeansAttention(causal=True), 4 clusters of 16) in absolute value; tests/test_candidates_script.py
#: repeats the probe.
CAUSAL = {
    "reformer_lsh": "LSHAttention(causal=True) masks j > i inside the chunks, but which keys share a query's "
    "chunk depends on later tokens' hashes (sorting by bucket): later tokens move earlier outputs",
    "routing": "KmeansAttention(causal=True): each cluster takes its top-w tokens over the whole sequence "
    "and the centroids are fitted to it, so later tokens decide which earlier keys a query sees",
    "sinkhorn": "SinkhornAttention has no causal form (SinkhornCausalAttention is another module, not wrapped)",
}


def register() -> None:
    """Register the three candidates under their names (once per process)."""
    from effattn.registry import register_attention

    for name, cls in PLUGINS.items():  # registering the same class again is a no-op
        register_attention(name, source="benchmarks/candidates.py")(cls)
