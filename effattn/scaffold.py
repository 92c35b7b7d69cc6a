"""`effattn new-plugin NAME`: a ready plugin package to fill in.

It writes a package with the entry point, a plugin module holding the contract's skeleton (the
facts, the options, `dense_mask` and a `forward` to write), and a test that runs the conformance
suite. Until its forward is written the plugin fails that suite: it does not pass by doing nothing.
With `mixer=True` (`effattn new-plugin NAME --mixer`) the module is a sequence mixer's skeleton
instead (docs/mixers.md): a subclass of effattn's MixerBase with `mix` and `step_state` to write.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import tempfile

from .errors import EffattnError
from .registry import ENTRY_POINT_GROUP


class ScaffoldError(EffattnError):
    pass


def names_for(name: str) -> dict[str, str]:
    """The names the package uses: plugin `my_window` -> distribution `effattn-my-window`,
    module `effattn_my_window`, class `MyWindowAttention`."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", name):
        raise ScaffoldError(
            f"plugin name {name!r} must be ASCII letters, digits and _, starting with a letter, at most 64, "
            "e.g. my_window"
        )
    if keyword.iskeyword(name):
        raise ScaffoldError(f"plugin name {name!r} is a Python keyword; choose another")
    return {
        "name": name,
        "dist": "effattn-" + name.lower().replace("_", "-"),
        "module": "effattn_" + name.lower(),
        "cls": "".join(part.capitalize() for part in name.split("_") if part) + "Attention",
    }


PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "The {name} attention plugin for effattn"
requires-python = ">=3.10"
dependencies = ["effattn", "torch"]

[project.optional-dependencies]
test = ["pytest>=7"]

# effattn finds the plugin here. After editing this table, reinstall the package
# (pip install -e .): entry points are read from the installed metadata, not from this file.
[project.entry-points."{group}"]
{name} = "{module}:{cls}"

[tool.setuptools]
packages = ["{module}"]
"""

MODULE = '''\
"""The `{name}` attention plugin for effattn.

Write `forward` (and, for an exact plugin, `dense_mask`), then run `pytest` here: the conformance
suite checks the plugin against what it declares below.
"""

import torch
from torch import nn


class {cls}(nn.Module):
    """{name}: one line saying what it computes (effattn list shows this line)."""

    # What the plugin declares; the conformance suite checks each claim, and a claim left out
    # takes the modest default shown in effattn's docs/plugins.md. These claims fit the window
    # skeleton below: claim only what your forward really does (set the others to False).
    exact = True  # exact softmax attention over the pattern of dense_mask (False: an approximation)
    complexity = "O(n·w)"  # shown by effattn list
    supports_causal = True  # forward(causal=True) masks keys j > i
    supports_padding = True  # forward(key_padding_mask=...) ignores padded keys
    supports_cross = False  # n_q != n_k
    # wraps = ("a-library",)  # for a wrapper: the distributions whose versions results record

    def __init__(self, window: int = 16):
        # Options are keyword arguments with defaults (NAME:window=8 on the command line).
        # Validate them here; a ValueError's message is shown to the user in one line.
        super().__init__()
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"option window must be an integer >= 0, got {{window!r}}")
        self.window = window

    def dense_mask(self, n_q: int, n_k: int, causal: bool = False) -> torch.Tensor:
        """The exact pattern as a bool (n_q, n_k) tensor, True where query i attends key j: the
        suite compares forward with float64 attention over this pattern."""
        i = torch.arange(n_q)[:, None]
        j = torch.arange(n_k)[None, :]
        allowed = (i - j).abs() <= self.window
        return allowed & (j <= i) if causal else allowed

    def forward(self, q, k, v, causal: bool = False, key_padding_mask=None):
        """q: (batch, heads, n_q, head_dim); k, v: (batch, heads, n_k, head_dim).
        Returns (batch, heads, n_q, head_dim) in q's dtype, on q's device.
        causal: query i attends key j only when j <= i. key_padding_mask: (batch, n_k) bool,
        True at padding. A query row left with no key to attend outputs zeros."""
        raise NotImplementedError("write {cls}.forward")
'''

MIXER_MODULE = '''\
"""The `{name}` sequence mixer for effattn (a plugin of kind "mixer": it takes the layer's input).

Write `mix` and `step_state`, then run `pytest` here: the mixer conformance suite checks shapes,
causality, padding, empty input, decoding against the forward, determinism and gradients.
MixerBase does the checks, padding (as absence), empty input and the decoding calls around them.
"""

import torch
from torch import nn

from effattn.mixers.base import MixerBase, check_float


class {cls}(MixerBase):
    """{name}: one line saying what it computes (effattn list shows this line)."""

    kind = "mixer"  # (MixerBase says so already; the registry reads it)
    complexity = "O(n)"  # shown by effattn list

    def __init__(self, d_model: int = 64, n_heads: int = 4, seed: int = 0, decay: float = 0.9):
        # The backbone passes d_model and n_heads; the others are the mixer's own options
        # (NAME:decay=0.5 on the command line), validated here.
        super().__init__(d_model, n_heads, seed)
        self.decay = check_float("decay", decay, 0.0, 1.0)
        self.in_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.init_weights()  # every parameter drawn from `seed`: two builds are the same function

    def state_shapes(self, batch: int) -> dict:
        """The decoding state's tensors and their shapes: none may grow with the context."""
        return {{"h": (batch, self.d_model)}}

    def mix(self, x, state):
        """x (batch, n, d_model), from `state` (a MixerState, or None: the empty one), to
        (y (batch, n, d_model), the state after x: a MixerState holding the tensors of state_shapes).
        Token t's output may depend on tokens <= t only."""
        raise NotImplementedError("write {cls}.mix")

    def step_state(self, state, x):
        """One token x (batch, 1, d_model) -> its output (batch, 1, d_model); update `state` in place
        (state["h"] = ...). It must equal `mix` on the whole sequence, token by token."""
        raise NotImplementedError("write {cls}.step_state")
'''

TEST = """\
\"\"\"The conformance suite, one test per check (a check that does not apply is a skip).\"\"\"

from effattn.testing import conformance_tests

test_{name} = conformance_tests("{name}")
# the pattern at options that make it sparse at short lengths, too:
test_{name}_small_window = conformance_tests("{name}", window=2)
"""

README = """\
# {dist}

The `{name}` attention plugin for effattn.

```bash
pip install -e '.[test]'   # registers the entry point; effattn list shows {name}
pytest                     # the conformance suite: it fails until forward is written
effattn bench --attn full,{name} --seq-lens 1k,2k,4k
```
"""


MIXER_TEST = """\
\"\"\"The mixer conformance suite, one test per check (a check that does not apply is a skip).\"\"\"

from effattn.testing import conformance_tests

test_{name} = conformance_tests("{name}")
test_{name}_slow_decay = conformance_tests("{name}", decay=0.99)
"""


def new_plugin(name: str, directory: str = ".", mixer: bool = False) -> str:
    """Write the package for plugin `name` into `directory`/effattn-NAME; return that path.
    Refuses a folder that exists and is not empty. `mixer`: a sequence mixer's skeleton."""
    n = names_for(name)
    if mixer:
        n["cls"] = n["cls"].removesuffix("Attention") + "Mixer"
    if not isinstance(directory, (str, os.PathLike)) or not str(directory).strip():
        raise ScaffoldError("the directory is empty; leave it out to use the current one")
    root = os.path.join(str(directory), n["dist"])
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise ScaffoldError(f"{root} already exists and is not empty; choose another --dir")
    files = {
        "pyproject.toml": PYPROJECT,
        os.path.join(n["module"], "__init__.py"): MIXER_MODULE if mixer else MODULE,
        os.path.join("tests", "test_conformance.py"): MIXER_TEST if mixer else TEST,
        "README.md": README,
    }
    made_dir = None  # the topmost folder this call creates, removed again if it fails
    d = os.path.abspath(str(directory))
    while not os.path.exists(d) and os.path.dirname(d) != d:
        made_dir, d = d, os.path.dirname(d)
    tmp = None
    try:  # written in a folder of its own, renamed into place at the end: a failure leaves nothing
        os.makedirs(str(directory), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".effattn-new-plugin-", dir=str(directory))
        for rel, template in files.items():
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "x") as f:
                f.write(template.format(group=ENTRY_POINT_GROUP, **n))
        os.rename(tmp, root)  # (onto an empty folder too)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if made_dir:
            shutil.rmtree(made_dir, ignore_errors=True)
        raise ScaffoldError(f"cannot write {root}: {e.strerror or e}") from None
    return root
