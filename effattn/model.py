"""One Transformer backbone (Vaswani et al. 2017) into which any registered attention drops by name.

Three shapes built from the same blocks:

* `encoder`  - bidirectional encoder + mean-pooled classification head;
* `decoder`  - causal language model (decoder-only);
* `encdec`   - encoder, and a decoder with causal self-attention and cross-attention to it.

Post-norm residual blocks as in the paper, x = LayerNorm(x + Dropout(Sublayer(x))); with
`norm_first=True`, pre-norm x = x + Dropout(Sublayer(LayerNorm(x))) and a final LayerNorm (Xiong et
al. 2020).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
from einops import rearrange
from torch import nn

from .errors import UnsupportedError
from .registry import Facts, create_attention, get_entry, option_names

SHAPES = ("encoder", "decoder", "encdec")


@dataclass
class TransformerConfig:
    vocab_size: int = 256  # tokens; the embedding is shared by encoder and decoder
    d_model: int = 512  # residual width (paper: 512)
    n_heads: int = 8  # heads; head_dim = d_model // n_heads
    n_kv_heads: int | None = None  # key/value heads (grouped-query; 1 = multi-query); None = n_heads
    n_layers: int = 6  # encoder layers (decoder-only: decoder layers)
    n_decoder_layers: int = 6  # decoder layers of the encoder-decoder
    d_ff: int = 2048  # feed-forward hidden width (paper: 4 * d_model)
    dropout: float = 0.1  # on attention output, feed-forward output and embeddings
    num_classes: int = 10  # classification head of the encoder shape
    attention: str = "full"  # self-attention plugin name
    attention_options: dict = field(default_factory=dict)
    cross_attention: str | None = None  # plugin for decoder cross-attention; None = same as `attention`
    cross_attention_options: dict | None = None
    conv_kernel: int = 0  # >0: causal depthwise conv of this width before attention (Zoology, H3)
    norm_first: bool = False  # False: the paper's post-norm; True: pre-norm with a final LayerNorm

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_kv_heads is not None and (
            isinstance(self.n_kv_heads, bool) or not isinstance(self.n_kv_heads, int) or self.n_kv_heads < 1
            or self.n_heads % self.n_kv_heads
        ):  # fmt: skip
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must be a positive divisor of n_heads ({self.n_heads})")
        for k in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "num_classes"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> TransformerConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, TransformerConfig] = {
    # for tests: trains a step in milliseconds
    "tiny": TransformerConfig(
        vocab_size=32, d_model=32, n_heads=4, n_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.0, num_classes=4
    ),
    # for CPU task runs (MQAR, ListOps) in minutes
    "small": TransformerConfig(d_model=64, n_heads=4, n_layers=2, n_decoder_layers=2, d_ff=256, dropout=0.0),
    # the paper's base model
    "base": TransformerConfig(),
}


def sinusoidal_positions(n: int, d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)  -> (n, d)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv[: d // 2])
    return pe.to(dtype)


def _require(name: str, options: dict, *, causal: bool, cross: bool, role: str) -> None:
    facts: Facts = get_entry(name).facts
    if causal and not facts.supports_causal:
        raise UnsupportedError(f"attention {name!r} cannot be used for {role}: it does not support causal masking")
    if not causal and facts.causal_only:
        raise UnsupportedError(f"attention {name!r} cannot be used for {role}: it computes only the causal form")
    if cross and not facts.supports_cross:
        raise UnsupportedError(
            f"attention {name!r} cannot be used for {role}: it does not support cross-attention "
            f"(n_q != n_k); set cross_attention='full'"
        )


class MultiHeadAttention(nn.Module):
    """Projections, split into heads, the plugin core, merge, output projection. With
    `n_kv_heads` K < n_heads, keys and values are projected to K heads, each shared by a group of
    n_heads / K query heads (grouped-query attention; K = 1 is multi-query)."""

    def __init__(
        self, d_model: int, n_heads: int, attention: str, options: dict, causal: bool = False, n_kv_heads=None
    ):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.n_kv_heads = n_kv_heads or n_heads
        if n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({n_heads})")
        kv_width = d_model // n_heads * self.n_kv_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, kv_width)
        self.v_proj = nn.Linear(d_model, kv_width)
        self.out_proj = nn.Linear(d_model, d_model)
        if "head_dim" not in options and "head_dim" in option_names(get_entry(attention).target)[0]:
            # a plugin whose parameters are sized by the head dimension (gla, deltanet) makes them now,
            # so that an optimizer built before the first forward sees them
            options = {**options, "head_dim": d_model // n_heads}
        self.core = create_attention(attention, **options)
        if self.n_kv_heads != n_heads and not getattr(self.core, "supports_gqa", False):
            raise UnsupportedError(
                f"attention {attention!r} does not support grouped-query heads ({n_heads} query heads, "
                f"{self.n_kv_heads} key/value heads)"
            )

    def _heads(self, x, src):
        q = rearrange(self.q_proj(x), "b n (h d) -> b h n d", h=self.n_heads)  # (B, H, n_q, D)
        k = rearrange(self.k_proj(src), "b n (h d) -> b h n d", h=self.n_kv_heads)  # (B, K, n_k, D)
        v = rearrange(self.v_proj(src), "b n (h d) -> b h n d", h=self.n_kv_heads)
        return q, k, v

    def forward(self, x, memory=None, key_padding_mask=None):
        q, k, v = self._heads(x, x if memory is None else memory)
        out = self.core(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))

    # decoding (self-attention): the plugin's own cache, or recomputation (effattn.decoding)
    def new_cache(self, batch: int, dtype=torch.float32, device="cpu", max_len: int = 0):
        from .decoding import decoder_for

        self._decoder = decoder_for(self.core)
        D = self.q_proj.out_features // self.n_heads
        return self._decoder.new_cache(batch, self.n_kv_heads, D, dtype=dtype, device=device, max_len=max_len)

    def prefill(self, cache, x, key_padding_mask=None):
        q, k, v = self._heads(x, x)
        out = self._decoder.prefill(cache, q, k, v, key_padding_mask=key_padding_mask)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))

    def step(self, cache, x):
        q, k, v = self._heads(x, x)
        return self.out_proj(rearrange(self._decoder.step(cache, q, k, v), "b h n d -> b n (h d)"))


class MixerLayer(nn.Module):
    """A sequence mixer (a plugin of kind "mixer", docs/mixers.md) in the place of multi-head
    attention: it takes the layer input itself and owns its projections. Same calls as
    `MultiHeadAttention` (forward, new_cache, prefill, step), so the blocks need not tell them apart."""

    def __init__(self, d_model: int, n_heads: int, mixer: str, options: dict, causal: bool = True):
        super().__init__()
        self.causal = causal
        names = option_names(get_entry(mixer).target)[0]
        sized = {k: v for k, v in (("d_model", d_model), ("n_heads", n_heads)) if k in names and k not in options}
        if "seed" in names and "seed" not in options:
            # from torch's generator, as every other weight of the backbone: each layer its own draw,
            # and the model's seed (torch.manual_seed) decides them (a fixed default would give every
            # layer the same weights and every training seed the same mixers)
            sized["seed"] = int(torch.randint(0, 2**31 - 1, ()))
        self.core = create_attention(mixer, **sized, **options)

    def forward(self, x, memory=None, key_padding_mask=None):
        if memory is not None:
            raise UnsupportedError(f"{self.core.attention_name!r} is a sequence mixer: it has no cross-attention form")
        return self.core(x, causal=self.causal, key_padding_mask=key_padding_mask)

    def new_cache(self, batch: int, dtype=torch.float32, device="cpu", max_len: int = 0):
        return self.core.new_cache(batch, dtype=dtype, device=device, max_len=max_len)

    def prefill(self, cache, x, key_padding_mask=None):
        return self.core.prefill(cache, x, key_padding_mask=key_padding_mask)

    def step(self, cache, x):
        return self.core.step(cache, x)


def self_mixing(d_model: int, n_heads: int, name: str, options: dict, causal: bool, n_kv_heads=None) -> nn.Module:
    """The layer that mixes tokens: multi-head attention around an attention plugin, or a mixer."""
    if get_entry(name).facts.kind == "mixer":
        if n_kv_heads not in (None, n_heads):
            raise UnsupportedError(f"{name!r} is a sequence mixer: grouped-query heads (n_kv_heads) do not apply")
        return MixerLayer(d_model, n_heads, name, options, causal=causal)
    return MultiHeadAttention(d_model, n_heads, name, options, causal=causal, n_kv_heads=n_kv_heads)


class CausalConv(nn.Module):
    """Short causal depthwise convolution (H3, Zoology's BaseConv): lets every mixer see the
    previous few tokens exactly, which plain linear attention cannot single out."""

    def __init__(self, d_model: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model)

    def forward(self, x):  # (B, n, d)
        x = nn.functional.pad(x.transpose(1, 2), (self.kernel - 1, 0))
        return self.conv(x).transpose(1, 2)


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class Block(nn.Module):
    """Self-attention (+ cross-attention) + feed-forward, each wrapped in residual + LayerNorm."""

    def __init__(self, cfg: TransformerConfig, causal: bool, cross: bool):
        super().__init__()
        d = cfg.d_model
        self.conv = CausalConv(d, cfg.conv_kernel) if cfg.conv_kernel > 0 else None
        self.self_attn = self_mixing(
            d, cfg.n_heads, cfg.attention, cfg.attention_options, causal=causal, n_kv_heads=cfg.n_kv_heads
        )
        self.norm1 = nn.LayerNorm(d)
        self.cross_attn = None
        if cross:
            name = cfg.cross_attention or cfg.attention
            opts = (
                cfg.cross_attention_options
                if cfg.cross_attention_options is not None
                else (cfg.attention_options if cfg.cross_attention is None else {})
            )
            self.cross_attn = MultiHeadAttention(d, cfg.n_heads, name, opts, causal=False)
            self.norm_cross = nn.LayerNorm(d)
        self.ff = FeedForward(d, cfg.d_ff, cfg.dropout)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm_first = cfg.norm_first

    def decode(self, cache, x, first: bool):
        """The block on new tokens x, its self-attention through `cache` (prefill when `first`)."""
        attn = (lambda h: self.self_attn.prefill(cache, h)) if first else (lambda h: self.self_attn.step(cache, h))
        if self.norm_first:
            x = x + self.drop(attn(self.norm1(x)))
            return x + self.drop(self.ff(self.norm2(x)))
        x = self.norm1(x + self.drop(attn(x)))
        return self.norm2(x + self.drop(self.ff(x)))

    def forward(self, x, key_padding_mask=None, memory=None, memory_padding_mask=None):
        if self.conv is not None:
            x = x + self.conv(x)
        if self.norm_first:
            x = x + self.drop(self.self_attn(self.norm1(x), key_padding_mask=key_padding_mask))
            if self.cross_attn is not None:
                x = x + self.drop(self.cross_attn(self.norm_cross(x), memory, key_padding_mask=memory_padding_mask))
            return x + self.drop(self.ff(self.norm2(x)))
        x = self.norm1(x + self.drop(self.self_attn(x, key_padding_mask=key_padding_mask)))
        if self.cross_attn is not None:
            x = self.norm_cross(x + self.drop(self.cross_attn(x, memory, key_padding_mask=memory_padding_mask)))
        return self.norm2(x + self.drop(self.ff(x)))


class Transformer(nn.Module):
    """`Transformer(cfg, shape)`: shape is "encoder", "decoder" or "encdec".

    encoder: forward(tokens, key_padding_mask=None) -> (B, num_classes) logits
    decoder: forward(tokens) -> (B, n, vocab) next-token logits
    encdec:  forward(src, tgt, src_padding_mask=None) -> (B, n_tgt, vocab) logits
    """

    def __init__(self, cfg: TransformerConfig, shape: str = "encoder"):
        super().__init__()
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
        self.cfg, self.shape = cfg, shape
        if shape in ("encoder", "encdec"):
            _require(cfg.attention, cfg.attention_options, causal=False, cross=False, role=f"the {shape}'s encoder")
        if shape in ("decoder", "encdec"):
            _require(
                cfg.attention, cfg.attention_options, causal=True, cross=False, role=f"the {shape}'s self-attention"
            )
        if shape == "encdec":
            _require(cfg.cross_attention or cfg.attention, {}, causal=False, cross=True, role="cross-attention")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # The paper multiplies embeddings by sqrt(d_model); that assumes weights of scale d^-1/2.
        # With nn.Embedding's N(0, 1) the tokens would swamp the positional encoding by sqrt(d)
        # (measured: MQAR stuck at chance), so initialise to N(0, 1/d_model).
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)
        self.drop = nn.Dropout(cfg.dropout)
        n_enc = cfg.n_layers if shape != "decoder" else 0
        n_dec = cfg.n_layers if shape == "decoder" else (cfg.n_decoder_layers if shape == "encdec" else 0)
        self.encoder = nn.ModuleList(Block(cfg, causal=False, cross=False) for _ in range(n_enc))
        self.decoder = nn.ModuleList(Block(cfg, causal=True, cross=shape == "encdec") for _ in range(n_dec))
        out = cfg.num_classes if shape == "encoder" else cfg.vocab_size
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.norm_first else nn.Identity()
        self.head = nn.Linear(cfg.d_model, out)

    def _embed(self, tokens, start: int = 0):
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        pe = sinusoidal_positions(start + tokens.shape[1], self.cfg.d_model, tokens.device, x.dtype)[start:]
        return self.drop(x + pe)

    # ------------------------------------------------------------------ generation (decoder shape)
    def new_caches(self, batch: int, dtype=torch.float32, device="cpu", max_len: int = 0) -> list:
        """One cache per decoder layer: the plugin's own, or recomputation (docs/decoding.md)."""
        if self.shape != "decoder":
            raise UnsupportedError(f"decoding is implemented for the decoder shape, not {self.shape!r}")
        if self.cfg.conv_kernel:
            raise UnsupportedError("decoding with conv_kernel > 0 is not implemented (the convolution has no cache)")
        return [blk.self_attn.new_cache(batch, dtype, device, max_len) for blk in self.decoder]

    def prefill(self, caches: list, tokens):
        """Run the prompt (B, p) through the decoder, filling `caches`; (B, p, vocab) logits."""
        x = self._embed(tokens)
        for blk, cache in zip(self.decoder, caches):
            x = blk.decode(cache, x, first=True)
        return self.head(self.final_norm(x))

    def step(self, caches: list, token, position: int):
        """One token (B, 1) at `position` through the decoder with its caches; (B, 1, vocab) logits."""
        x = self._embed(token, position)
        for blk, cache in zip(self.decoder, caches):
            x = blk.decode(cache, x, first=False)
        return self.head(self.final_norm(x))

    @torch.no_grad()
    def generate(self, prompt, steps: int):
        """Greedy continuation of `prompt` (B, p) by `steps` tokens, one at a time through the caches."""
        caches = self.new_caches(prompt.shape[0], self.head.weight.dtype, prompt.device, prompt.shape[1] + steps)
        logits = self.prefill(caches, prompt)
        out = [prompt]
        tok = logits[:, -1:].argmax(-1)
        for t in range(steps):
            out.append(tok)
            if t + 1 < steps:
                tok = self.step(caches, tok, prompt.shape[1] + t).argmax(-1)
        return torch.cat(out, 1)

    def encode(self, tokens, key_padding_mask=None):
        x = self._embed(tokens)
        for blk in self.encoder:
            x = blk(x, key_padding_mask=key_padding_mask)
        return self.final_norm(x) if self.shape == "encoder" else x

    def forward(self, tokens, tgt=None, key_padding_mask=None):
        if self.shape == "encoder":
            x = self.encode(tokens, key_padding_mask)
            if key_padding_mask is None:
                pooled = x.mean(1)
            else:
                keep = (~key_padding_mask).unsqueeze(-1).to(x.dtype)
                pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1)
            return self.head(pooled)
        if self.shape == "decoder":
            x = self._embed(tokens)
            for blk in self.decoder:
                x = blk(x)
            return self.head(self.final_norm(x))
        if tgt is None:
            raise ValueError("the encoder-decoder needs forward(src, tgt)")
        memory = self.encode(tokens, key_padding_mask)
        x = self._embed(tgt)
        for blk in self.decoder:
            x = blk(x, memory=memory, memory_padding_mask=key_padding_mask)
        return self.head(self.final_norm(x))


def build_model(shape: str = "encoder", preset: str = "tiny", **overrides) -> Transformer:
    """`build_model("decoder", "tiny", attention="sliding_window", attention_options={"window": 8})`"""
    return Transformer(TransformerConfig.from_name(preset, **overrides), shape)
