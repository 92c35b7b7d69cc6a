"""Named, versioned sweep configurations: `effattn bench --preset NAME`, listed by `effattn presets`.

A preset is the options of `effattn bench` (by their parameter names, with values as the command
line takes them) that make one canonical experiment. Options given beside `--preset` override the
preset's; every row of the run records the preset, its version, its options and the overrides
(`preset`, `preset_version`, `preset_options`, `preset_overrides`). A preset whose options change
gets a new version, so that rows say which form of it measured them.

results/REPRODUCTIONS.md holds what the presets reproduce and how close they come.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EffattnError


@dataclass(frozen=True)
class Preset:
    name: str
    version: int
    summary: str  # one line, for `effattn presets`
    options: dict = field(default_factory=dict)  # bench parameter name -> value
    source: str = ""  # the published setting it follows, where it follows one


PRESETS: dict[str, Preset] = {}


def _add(p: Preset) -> None:
    PRESETS[p.name] = p


_add(
    Preset(
        "lra-speed",
        1,
        "LRA Table 2's speed and memory setting scaled to a CPU: byte-level encoder, d 256, 4 heads, 4 layers, "
        "MLP 1024, forward + backward at n = 1k-4k, batch 2",
        {
            "attn": "naive,full,performer:num_features=256,linear,linformer:proj_len=32,sliding_window:window=25,"
            "bigbird:block_size=64",
            "seq_lens": "1k,2k,3k,4k",
            "level": "model",
            "mode": "fwdbwd",
            "heads": 4,
            "head_dim": 64,
            "layers": 4,
            "batch": 2,
            "no_error": True,
            "min_run_time": 1.0,
            "timeout_s": 300.0,
        },
        "Tay et al. 2021, Long Range Arena, Table 2 (TPU v3, batch 32; Linformer k = 32, Performer 256 "
        "features, local attention block 50 -> window 25 each side here, BigBird block 64)",
    )
)
_add(
    Preset(
        "all-builtins",
        1,
        "every effattn built-in that runs on a CPU (no wrappers of other libraries), forward, n = 256-4k: "
        "the sweep that `effattn bench` with no options was before its first taste",
        {
            "attn": "bigbird,full,linear,linformer,masked,moba,naive,nsa,nystrom,performer,sliding_window,"
            "sliding_window_sinks,sparse",
            "seq_lens": "256,512,1k,2k,4k",
        },
    )
)
_add(
    Preset(
        "long-context",
        1,
        "every exact and approximate built-in, forward, n = 256-16k, each point in its own process",
        {
            "attn": "full,naive,masked,sliding_window,sliding_window_sinks,bigbird,sparse,sparse:pattern=fixed,"
            "linear,performer,linformer,nystrom",
            "seq_lens": "256,512,1k,2k,4k,8k,16k",
            "isolate": True,
            "no_error": True,
            "min_run_time": 0.3,
            "timeout_s": 120.0,
        },
    )
)
_add(
    Preset(
        "mqar-zoology",
        1,
        "MQAR as in Zoology's Figure 2 at CPU scale: seq 128 with 8 pairs, vocabulary 128, 2 layers, d_model 64 "
        "(vary --d-model for the width axis), 2500 steps, 2 seeds",
        {
            "task_spec": "mqar:num_pairs=8:vocab=128",
            "attn": "full,linear,performer:num_features=64",
            "seq_lens": "128",
            "layers": 2,
            "d_model": 64,
            "steps": 2500,
            "lr": 3e-3,
            "seeds": 2,
        },
        "Arora et al. 2023, Zoology, Figure 2 (vocabulary 8192; (64, 4), (128, 8), (256, 16); d_model 64-512; "
        "learning rates logspace(-4, -2))",
    )
)
_add(
    Preset(
        "mqar-capacity",
        1,
        "MQAR's capacity form: 16 pairs, vocabulary 256, seq 128, short conv (kernel 4) in both models, 2 seeds",
        {
            "task_spec": "mqar:num_pairs=16:vocab=256",
            "attn": "full,linear",
            "seq_lens": "128",
            "conv_kernel": 4,
            "steps": 2000,
            "seeds": 2,
        },
    )
)
_add(
    Preset(
        "peers",
        1,
        "effattn's window and Performer beside the libraries users pick (local-attention, HF Longformer, "
        "FlexAttention, performer-pytorch), forward, n = 1k-16k; needs pip install 'effattn[peers]'",
        {
            "attn": "full,sliding_window,local_attention,hf_longformer,flex:mask=sliding_window,performer,"
            "performer_pytorch",
            "seq_lens": "1k,2k,4k,8k,16k",
            "min_run_time": 0.3,
        },
    )
)
_add(
    Preset(
        "decode",
        1,
        "generation: the per-token step at context 1k-64k with each plugin's cache (batch 1, 8 heads, head_dim 64)",
        {
            "mode": "decode",
            "attn": "full,sliding_window,sliding_window_sinks,linear,performer,sparse,bigbird",
            "seq_lens": "1k,4k,16k,64k",
        },
    )
)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise EffattnError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
