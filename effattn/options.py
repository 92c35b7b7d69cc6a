"""Checks of option values, shared by every layer that takes options (attention plugins, tasks).
Each returns the value when it is valid and raises `OptionError` with a one-line message when not."""

from __future__ import annotations

import math

from .errors import OptionError


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"option {name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise OptionError(f"option {name} must be {rng}, got {value}")
    return value


def check_float(name: str, value, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(f"option {name} must be a number, got {value!r}")
    if not math.isfinite(value):  # NaN passes every comparison below; no option here means infinity
        raise OptionError(f"option {name} must be a finite number, got {value}")
    bad = value <= lo if lo_open else value < lo
    if bad or (hi is not None and value > hi):
        rng = (f"> {lo}" if lo_open else f">= {lo}") + ("" if hi is None else f" and <= {hi}")
        raise OptionError(f"option {name} must be {rng}, got {value}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise OptionError(f"option {name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value
