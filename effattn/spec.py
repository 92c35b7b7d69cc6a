"""Parsing what a user types: variants `NAME[:KEY=VALUE...]`, lengths `256,1k,2k`, sizes `4GB`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import EffattnError
from .registry import create_attention, get_entry, option_defaults


@dataclass(frozen=True)
class Variant:
    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Readable and unique: the name plus its non-default options."""
        defaults = option_defaults(get_entry(self.name).target)
        shown = {k: v for k, v in self.options.items() if defaults.get(k, object()) != v}
        return self.name + "".join(f":{k}={v}" for k, v in sorted(shown.items()))

    def build(self):
        return create_attention(self.name, **self.options)

    def __hash__(self):
        return hash((self.name, tuple(sorted(self.options.items()))))


def parse_value(text: str):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_variant(text: str, validate: bool = True) -> Variant:
    """`sliding_window:window=128:global_tokens=2` -> Variant; builds it once to validate."""
    parts = text.strip().split(":")
    name, options = parts[0].strip(), {}
    if not name:
        raise EffattnError(f"empty attention name in {text!r}")
    for p in parts[1:]:
        if "=" not in p:
            raise EffattnError(f"option {p!r} of {name!r} must be KEY=VALUE")
        key, val = p.split("=", 1)
        key = key.strip()
        if not key:
            raise EffattnError(f"option {p!r} of {name!r} has no name: write KEY=VALUE")
        if key in options:
            raise EffattnError(f"option {key!r} of {name!r} is given twice in {text.strip()!r}")
        options[key] = parse_value(val.strip())
    v = Variant(name, options)
    if validate:
        v.build()  # unknown names and bad options fail here, before any work starts
    return v


def parse_variants(text: str, validate: bool = True) -> list[Variant]:
    if not text.strip():
        raise EffattnError("no attention variant given (an empty --attn)")
    parts = text.split(",")
    if any(not t.strip() for t in parts):
        raise EffattnError(f"empty entry in the variant list {text!r}")
    out = [parse_variant(t, validate) for t in parts]
    if not out:
        raise EffattnError("no attention variant given")
    return out


_LEN = re.compile(r"^(\d+)([kKmM]?)$")


def parse_seq_lens(text: str) -> list[int]:
    """`256,512,1k,16k` -> [256, 512, 1024, 16384] (k = 1024, m = 1024 * 1024)."""
    if not text.strip():
        raise EffattnError("no sequence length given (an empty list)")
    lens = []
    for tok in text.split(","):
        tok = tok.strip()
        m = _LEN.match(tok)
        if not m:
            raise EffattnError(f"sequence length {tok!r} is not a positive integer (k or m suffix allowed, e.g. 2k)")
        n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2).lower()]
        if n <= 0:
            raise EffattnError(f"sequence length must be > 0, got {tok!r}")
        if n > 2**40:
            raise EffattnError(f"sequence length {tok!r} is longer than 2^40; no machine holds that")
        lens.append(n)
    if not lens:
        raise EffattnError("no sequence length given")
    return sorted(set(lens))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.I)


def parse_size(text: str) -> int:
    """`512MB`, `4G`, `2GiB`, `1000000` -> bytes (K/M/G/T are powers of 1024)."""
    m = _SIZE.match(text)
    if not text.strip():
        raise EffattnError("size is empty; give a number of bytes (e.g. 512MB, 4GB)")
    if not m:
        raise EffattnError(f"size {text!r} is not a number of bytes (e.g. 512MB, 4GB)")
    unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
    mult = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit]
    size = int(float(m.group(1)) * mult)
    if size <= 0:
        raise EffattnError(f"size must be > 0, got {text!r}")
    return size
