"""flash-linear-attention's plain-PyTorch reference files, loaded without Triton.

fla-core (the `peers` extra) ships, beside its Triton kernels, a `naive.py` per op that needs only
torch and einops: the reference recurrences effattn's `gla`, `deltanet`, `gated_deltanet` and `nsa`
are checked against (tests/test_gated_linear.py, tests/test_nsa.py, benchmarks/references.py).
`import fla` runs fla/__init__.py, which imports every Triton kernel and fails where Triton is not
installed (every CPU machine here), so `load("gla/naive")` loads fla/ops/gla/naive.py by path.

fla/ops/nsa/naive.py imports two helpers for variable-length inputs (`prepare_chunk_offsets`,
`mean_pooling`) from modules that need Triton: they are stubbed while it loads (neither is called
without `cu_seqlens`) and `sys.modules` is put back as it was afterwards.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path

#: the modules fla/ops/nsa/naive.py imports its variable-length helpers from
_NSA_STUBS = ["fla", "fla.ops", "fla.ops.utils", "fla.ops.utils.pooling"]


def path(rel: str) -> Path | None:
    """fla/ops/<rel>.py of the installed fla-core, or None (not installed, or no such file)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "ops" / f"{rel}.py"
    return p if p.exists() else None


def load(rel: str):
    """The module fla/ops/<rel>.py (e.g. "gla/naive", "delta_rule/naive", "nsa/naive"), or None
    when fla-core or the file is missing."""
    p = path(rel)
    if p is None:
        return None
    names = _NSA_STUBS if rel == "nsa/naive" else []
    saved = {nm: sys.modules.get(nm) for nm in names}

    def unused(*a, **kw):
        raise NotImplementedError("stubbed: only used with cu_seqlens")

    try:
        for nm in names:
            sys.modules[nm] = types.ModuleType(nm)
        if names:
            sys.modules["fla.ops.utils"].prepare_chunk_offsets = unused
            sys.modules["fla.ops.utils.pooling"].mean_pooling = unused
        spec = importlib.util.spec_from_file_location(f"_fla_{rel.replace('/', '_')}", p)
        mod = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():  # e.g. "Flash Attention is not installed": not needed here
            warnings.simplefilter("ignore")
            spec.loader.exec_module(mod)
        return mod
    finally:
        for nm, m in saved.items():
            if m is None:
                sys.modules.pop(nm, None)
            else:
                sys.modules[nm] = m
