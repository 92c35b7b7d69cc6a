"""Pictures of each exact variant's attention pattern, drawn small enough that its structure shows."""

from __future__ import annotations

import os

import pandas as pd

#: options capped when drawing a pattern at n = 128 (the defaults would cover the whole picture)
PATTERN_CAPS = {"window": 8, "block_size": 8, "stride": 8, "global_tokens": 2}


def pattern_pictures(df: pd.DataFrame, out_dir: str, n: int = 128) -> list[tuple[str, str, str]]:
    """(label, file, formula) for each exact pattern variant in the results, drawn at n with its
    options shrunk (the first of a plugin's `small_options`, else PATTERN_CAPS by option name) so
    that its structure shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..contract import dense_mask, facts
    from ..registry import create_attention, get_entry, option_defaults, option_names

    made = []
    # one picture per variant as measured: its fwd and fwdbwd rows (label_series' "[mode=...]"
    # labels) share one pattern
    by = "base_label" if "base_label" in df else "label"
    for (label, name), g in df.groupby([by, "variant"], sort=False):
        try:
            opts = g.iloc[0]["options"] if isinstance(g.iloc[0]["options"], dict) else {}
            target = get_entry(name).target
            names, _ = option_names(target)
            defaults = option_defaults(target)
            small = {k: v for k, v in opts.items() if k in names}
            declared = next(iter(get_entry(name).facts.small_options), None)  # a plugin's own way to draw itself small
            caps = declared if declared is not None else PATTERN_CAPS
            for key, cap in caps.items():  # shrink the pattern so its structure shows at n
                if key in names and key in defaults:
                    now = small.get(key, defaults[key])
                    small[key] = (
                        min(now, cap) if isinstance(now, (int, float)) and isinstance(cap, (int, float)) else cap
                    )
            if "summary" in names and declared is None:
                small["summary"] = min(opts.get("summary", 2), small.get("stride", 8))
            attn = create_attention(name, **small)
            m = dense_mask(attn, n, n, False) if facts(attn).exact else None
            if m is None:
                continue
        except Exception:  # noqa: BLE001 - a picture is optional; the report goes on
            continue
        fname = f"pattern_{''.join(ch if ch.isalnum() else '_' for ch in label)}.png"
        fig, ax = plt.subplots(figsize=(2.4, 2.4))
        # a fixed range: an all-attending pattern is black, not a blank white square
        ax.imshow(m.numpy().astype(float), cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest")
        drawn = ", ".join(f"{k}={v}" for k, v in sorted(small.items()))
        ax.set_title(f"{name}({drawn}), n={n}" if drawn else f"{name}, n={n}", fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
        fig.savefig(os.path.join(out_dir, fname), dpi=100, bbox_inches="tight")
        plt.close(fig)
        doc = (get_entry(name).target.__doc__ or "").strip().splitlines()
        made.append((label, fname, doc[0] if doc else name))
    return made
