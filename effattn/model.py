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
from .registry import Facts, create_attention, get_entry

SHAPES = ("encoder", "decoder", "encdec")


@dataclass
class TransformerConfig:
    vocab_size: int = 256  # tokens; the embedding is shared by encoder and decoder
    d_model: int = 512  # residual width (paper: 512)
    n_heads: int = 8  # heads; head_dim = d_model // n_heads
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
    if cross and not facts.supports_cross:
        raise UnsupportedError(
            f"attention {name!r} cannot be used for {role}: it does not support cross-attention "
            f"(n_q != n_k); set cross_attention='full'"
        )


class MultiHeadAttention(nn.Module):
    """Projections, split into heads, the plugin core, merge, output projection."""

    def __init__(self, d_model: int, n_heads: int, attention: str, options: dict, causal: bool = False):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.core = create_attention(attention, **options)

    def forward(self, x, memory=None, key_padding_mask=None):
        src = x if memory is None else memory
        q = rearrange(self.q_proj(x), "b n (h d) -> b h n d", h=self.n_heads)  # (B, H, n_q, D)
        k = rearrange(self.k_proj(src), "b n (h d) -> b h n d", h=self.n_heads)  # (B, H, n_k, D)
        v = rearrange(self.v_proj(src), "b n (h d) -> b h n d", h=self.n_heads)
        out = self.core(q, k, v, causal=self.causal, key_padding_mask=key_padding_mask)
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


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
        self.self_attn = MultiHeadAttention(d, cfg.n_heads, cfg.attention, cfg.attention_options, causal=causal)
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

    def _embed(self, tokens):
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        return self.drop(x + sinusoidal_positions(tokens.shape[1], self.cfg.d_model, tokens.device, x.dtype))

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
