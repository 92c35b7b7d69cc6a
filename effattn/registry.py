"""The attention registry: a dict, a decorator, wildcard listing and entry-point discovery.

Modelled on timm's `_registry.py` (a dict filled by a decorator, `fnmatch` listing) and on
pytest's `pytest11` entry-point group (third-party plugins found once, a broken one reported
by name instead of breaking the rest).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .errors import OptionError, UnknownAttentionError

ENTRY_POINT_GROUP = "effattn.attention"
#: the kinds of plugin: attention (q, k, v in, (B, H, n, Dv) out) and sequence mixer (x in, x's shape out)
KINDS = ("attention", "mixer")


#: the optional methods a plugin may have beside `forward`; Facts says which it has
OPTIONAL_METHODS = {
    "has_dense_mask": "dense_mask",  # (n_q, n_k, causal) -> bool mask: the pattern an exact plugin computes
    "has_nnz": "nnz",  # (n_q, n_k, causal) -> int: its attended pairs, counted without the mask
    "states_flops": "algorithm_flops",  # (batch, heads, kv_heads, n_q, n_k, head_dim, causal) -> int
    "declares_memory": "min_memory_bytes",  # (batch, heads, n_q, n_k, head_dim, element_size, causal, grad)
    "has_availability": "availability",  # (device) -> None, or why it cannot run there
}


@dataclass(frozen=True)
class Facts:
    """What a plugin declares about itself, read once from its class (`Facts.of`) when it is
    registered; every consumer (the sweep, the conformance suite, the report, `effattn list`)
    asks these instead of the plugin. Undeclared facts take these defaults, which are
    deliberately modest: a minimal plugin (one class with a `forward`) is treated as an
    approximate, non-causal, self-attention-only, unpadded plugin of unknown complexity, and the
    conformance suite checks only what is claimed."""

    #: "attention" (called with q, k, v: docs/plugins.md) or "mixer" (called with the layer's input
    #: x and owning its projections: docs/mixers.md)
    kind: str = "attention"
    exact: bool = False
    complexity: str = "unknown"
    supports_causal: bool = False
    causal_only: bool = False  # computes only the causal form (a recurrence): causal=False is refused
    supports_padding: bool = False
    supports_cross: bool = False
    supports_decode: bool = False  # new_cache / prefill / step (docs/decoding.md)
    supports_gqa: bool = False  # k, v may carry fewer heads than q (grouped-query)
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16")
    description: str = ""
    #: option sets that keep the plugin quick and its pattern non-trivial at short lengths (n <=
    #: 77): the conformance suite checks each, pictures and quick checks use the first
    small_options: tuple[dict, ...] = ()
    #: the libraries a wrapper runs (`wraps = ("local-attention",)`): their versions are recorded
    wraps: tuple[str, ...] = ()
    #: the relative error an approximate plugin's decoding may have against its causal forward
    decode_rtol: float | None = None
    has_dense_mask: bool = False
    has_nnz: bool = False
    states_flops: bool = False
    declares_memory: bool = False
    has_availability: bool = False

    @classmethod
    def of(cls, target: Any) -> Facts:
        values = {}
        for f in cls.__dataclass_fields__:
            if f in OPTIONAL_METHODS:
                values[f] = callable(getattr(target, OPTIONAL_METHODS[f], None))
            elif hasattr(target, f):
                v = getattr(target, f)
                if f in ("devices", "dtypes", "wraps"):  # "cpu" is one device; torch.float32 is "float32"
                    v = (v,) if isinstance(v, str) else tuple(v) if isinstance(v, (list, tuple, set)) else v
                    if isinstance(v, tuple):
                        v = tuple(str(x).replace("torch.", "") for x in v)
                elif f == "small_options":
                    v = (dict(v),) if isinstance(v, dict) else tuple(dict(x) for x in v or ())
                values[f] = tuple(v) if isinstance(v, (list, tuple)) else v
        if values.get("kind", "attention") not in KINDS:
            raise ValueError(f"kind {values['kind']!r}: a plugin's kind is one of {', '.join(KINDS)}")
        if "description" not in values:
            doc = inspect.getdoc(target) or ""
            values["description"] = doc.strip().splitlines()[0] if doc.strip() else ""
        return cls(**values)


@dataclass
class PluginEntry:
    name: str
    target: Any  # an nn.Module subclass or a factory returning one
    source: str = "builtin"  # "builtin", or "entry point (dist-name)"
    facts: Facts = field(default_factory=Facts)
    dist: str | None = None  # the distribution that provided it, where an entry point says so
    dist_version: str | None = None

    def availability(self, device: str = "cpu") -> str | None:
        """None when the plugin can run on `device` here, else the reason it cannot."""
        probe = getattr(self.target, "availability", None)
        if callable(probe):  # the plugin's own reason is the most useful one
            try:
                why = probe(device)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 - a broken probe (sys.exit too) must not break listing
                return f"unavailable: availability check failed ({type(e).__name__}: {e})"
            if why:
                return " ".join(str(why).split())  # one line, whatever the plugin wrote
        if device not in self.facts.devices:
            return f"unavailable: does not run on {device}"
        return None


_REGISTRY: dict[str, PluginEntry] = {}
_BROKEN: dict[str, str] = {}
_entry_points_loaded = False


def register_attention(name: str, *, source: str = "builtin") -> Callable:
    """Decorator: `@register_attention("sliding_window")` on an nn.Module class or a factory."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"attention name must be an identifier, got {name!r}")

    def deco(target):
        old = _REGISTRY.get(name)
        if old is not None:
            if old.target is target:
                return target  # the same object met again (decorator + entry point): fine
            raise ValueError(
                f"attention {name!r} is already registered by {old.source} "
                f"({_qualname(old.target)}); cannot register {_qualname(target)} under that name"
            )
        facts = Facts.of(target)  # (an unknown kind is refused here)
        _REGISTRY[name] = PluginEntry(name, target, source, facts)
        return target

    return deco


def register_mixer(name: str, *, source: str = "builtin") -> Callable:
    """Decorator for a sequence mixer (a class whose `kind` is "mixer"); otherwise as `register_attention`."""
    inner = register_attention(name, source=source)

    def deco(target):
        if getattr(target, "kind", "attention") != "mixer":
            raise ValueError(f"register_mixer({name!r}): {_qualname(target)} does not declare kind = 'mixer'")
        return inner(target)

    return deco


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def load_entry_points(force: bool = False) -> None:
    """Import third-party plugins from the `effattn.attention` entry-point group, once."""
    global _entry_points_loaded
    if _entry_points_loaded and not force:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        if ep.name in _REGISTRY and _REGISTRY[ep.name].source != "builtin" and not force:
            continue
        try:
            target = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - any import failure, sys.exit() included, makes it broken
            _BROKEN[ep.name] = f"{ep.value} failed to import: {type(e).__name__}: {e}"
            continue
        if not callable(target):
            _BROKEN[ep.name] = f"{ep.value} is a {type(target).__name__}, not a class or factory"
            continue
        old = _REGISTRY.get(ep.name)
        if old is not None and old.target is target:
            old.source = f"entry point ({dist})"
        else:
            try:
                register_attention(ep.name, source=f"entry point ({dist})")(target)
            except ValueError as e:
                _BROKEN[ep.name] = str(e)
                continue
            _BROKEN.pop(ep.name, None)
        _REGISTRY[ep.name].dist = dist if dist != "?" else None
        _REGISTRY[ep.name].dist_version = getattr(getattr(ep, "dist", None), "version", None)


def lookalike_groups() -> list[str]:
    """Installed entry-point groups that look like ours but are not (`effattn.attentions`,
    `effattn_attention`, ...): plugins there are never loaded, which is easy to miss."""
    want = ENTRY_POINT_GROUP.lower()
    out = []
    for group in sorted(metadata.entry_points().groups):
        g = group.lower()
        if group != ENTRY_POINT_GROUP and (
            g.startswith("effattn") or difflib.SequenceMatcher(None, g, want).ratio() >= 0.8
        ):
            out.append(group)
    return out


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def provenance(name: str) -> dict[str, Any]:
    """Which code a plugin's results come from: `plugin_dist` and `plugin_version` (the
    distribution that provided it: effattn for the built-ins, the entry point's package, or the
    package installed for the plugin's module), and `plugin_wraps`, the versions of the libraries
    a wrapper names in its `wraps` attribute (e.g. `wraps = ("local-attention",)`)."""
    entry = get_entry(name)
    module = getattr(entry.target, "__module__", "") or ""
    dist, version = entry.dist, entry.dist_version
    if dist is None and module.split(".")[0] == "effattn":
        from ._version import __version__

        dist, version = "effattn", __version__
    elif dist is None and module and module != "__main__":
        found = metadata.packages_distributions().get(module.split(".")[0], [])
        if found:
            dist = found[0]
            version = _dist_version(dist)
    wraps = entry.facts.wraps
    return {
        "plugin_dist": dist,
        "plugin_version": version,
        "plugin_wraps": {w: _dist_version(w) for w in wraps} or None,
    }


def option_info(target) -> list[dict[str, Any]]:
    """Each option a plugin takes: name, default (absent when required) and type (its
    annotation, else the default's type)."""
    names, _ = option_names(target)
    if not names:
        return []
    defaults = option_defaults(target)  # (the same reading of the signature create_attention uses)
    fn = target.__init__ if inspect.isclass(target) else target
    params = inspect.signature(fn).parameters
    out = []
    for n in names:
        p = params[n]
        info = {"name": n}
        if n in defaults:
            info["default"] = defaults[n]
        if p.annotation is not inspect.Parameter.empty:
            info["type"] = (
                p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
            )
        elif "default" in info and info["default"] is not None:
            info["type"] = type(info["default"]).__name__
        out.append(info)
    return out


_SOURCES: list[Callable[[], None]] = []
_sources_loaded = False


def add_source(load: Callable[[], None]) -> None:
    """A source of plugins besides the entry points: `load()` registers them, once, before the
    first lookup (effattn's package registers its built-ins so). The registry imports no plugin."""
    global _sources_loaded
    _SOURCES.append(load)
    _sources_loaded = False


def _ensure_loaded() -> None:
    global _sources_loaded
    if not _sources_loaded:
        _sources_loaded = True  # (set first: a plugin module that looks an entry up while loading)
        for load in list(_SOURCES):
            load()
    load_entry_points()


def list_attention(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style wildcard, sorted."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def broken_plugins() -> dict[str, str]:
    """Entry points that failed to load, with the reason."""
    _ensure_loaded()
    return dict(_BROKEN)


def get_entry(name: str) -> PluginEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    if name in _BROKEN:
        raise UnknownAttentionError(f"attention {name!r} is installed but broken: {_BROKEN[name]}")
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(_REGISTRY))}"
    raise UnknownAttentionError(f"unknown attention {name!r}{hint}")


def option_names(target) -> tuple[list[str], bool]:
    """The keyword options a plugin takes, and whether it also takes **kwargs."""
    if inspect.isclass(target) and _inherits_generic_init(target):
        return [], False
    fn = target.__init__ if inspect.isclass(target) else target
    params = list(inspect.signature(fn).parameters.values())
    if inspect.isclass(target):
        params = params[1:]  # self
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _inherits_generic_init(cls) -> bool:
    """True when a class takes no options of its own (its __init__ is object's or nn.Module's,
    whose `*args, **kwargs` would otherwise hide unknown options)."""
    import torch.nn

    return cls.__init__ in (object.__init__, torch.nn.Module.__init__)


def option_defaults(target) -> dict[str, Any]:
    if inspect.isclass(target) and _inherits_generic_init(target):
        return {}
    fn = target.__init__ if inspect.isclass(target) else target
    return {
        p.name: p.default for p in inspect.signature(fn).parameters.values() if p.default is not inspect.Parameter.empty
    }


def check_option_names(name: str, options: dict) -> None:
    """Refuse an option the plugin `name` does not take, naming the ones it does. Reads the
    signature only: no plugin code runs (a third-party constructor may hang or exit)."""
    entry = get_entry(name)
    names, var_kw = option_names(entry.target)
    unknown = [k for k in options if k not in names]
    if unknown and not var_kw:
        valid = ", ".join(names) if names else "none"
        bad = ", ".join(map(repr, unknown))
        raise OptionError(f"{entry.facts.kind} {name!r} has no option {bad}; valid options: {valid}")


def create_attention(name: str, **options):
    """Build the plugin `name` with its validated options."""
    entry = get_entry(name)
    what = f"{entry.facts.kind} {name!r}"  # "attention 'full'", "mixer 'deltanet'"
    check_option_names(name, options)
    defaults = option_defaults(entry.target)
    for k, v in options.items():
        d = defaults.get(k)
        # A CLI or config value of the wrong kind is named here rather than failing deep inside.
        if isinstance(d, bool) and not isinstance(v, bool):
            raise OptionError(f"{what}: option {k} must be true or false, got {v!r}")
        if isinstance(d, int) and not isinstance(d, bool) and (isinstance(v, bool) or not isinstance(v, int)):
            raise OptionError(f"{what}: option {k} must be an integer, got {v!r}")
        if isinstance(d, float) and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise OptionError(f"{what}: option {k} must be a number, got {v!r}")
    try:
        module = entry.target(**options)
    except OptionError as e:  # the plugin's own check: say which attention it is about
        if str(e).startswith(what):
            raise
        raise OptionError(f"{what}: {e}") from None
    except (TypeError, ValueError) as e:
        raise OptionError(f"{what}: {e}") from None
    import torch.nn

    if not isinstance(module, torch.nn.Module):
        raise OptionError(f"{what}: its factory returned a {type(module).__name__}, not a torch.nn.Module")
    module.attention_name = name
    module.attention_options = dict(options)
    return module
