"""Sequence mixers, the second kind of plugin: the kind fact, the registry, the backbone, the bench
levels, the suite's power to fail a wrong mixer, and the scaffold's mixer package."""

import json

import pytest
import torch

import effattn
from effattn.errors import UnsupportedError
from effattn.mixers.base import MixerBase, MixerState
from effattn.model import MixerLayer, Transformer, TransformerConfig
from effattn.registry import Facts, register_mixer
from effattn.testing import check_attention, run_checks

MIXERS = ("gla", "deltanet", "gated_deltanet", "mamba2")


def test_every_builtin_has_a_kind_and_the_mixers_are_mixers():
    kinds = {n: effattn.get_entry(n).facts.kind for n in effattn.list_attention()}
    assert set(kinds.values()) <= {"attention", "mixer"}
    assert {n for n, k in kinds.items() if k == "mixer"} >= set(MIXERS)
    for core in ("gla_core", "deltanet_core", "gated_deltanet_core"):  # the recurrences the layers call
        assert kinds[core] == "attention"


def test_an_unknown_kind_is_refused_and_register_mixer_wants_one():
    class Odd(torch.nn.Module):
        kind = "convolution"

    with pytest.raises(ValueError, match="kind 'convolution'"):
        Facts.of(Odd)

    class NotAMixer(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="does not declare kind = 'mixer'"):
        register_mixer("not_a_mixer_test")(NotAMixer)


@pytest.mark.parametrize("name", MIXERS)
def test_the_backbone_puts_a_mixer_where_attention_was(name):
    cfg = TransformerConfig.from_name("tiny", attention=name)
    model = Transformer(cfg, "decoder")
    layers = [m for m in model.modules() if isinstance(m, MixerLayer)]
    assert len(layers) == cfg.n_layers and layers[0].core.d_model == cfg.d_model
    tokens = torch.randint(0, cfg.vocab_size, (2, 11))
    logits = model(tokens)
    assert logits.shape == (2, 11, cfg.vocab_size)
    logits.sum().backward()
    # generation through the mixers' states equals the forward
    model.eval()
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_caches(2)
        out = [model.prefill(caches, tokens[:, :4])]
        for t in range(4, 11):
            out.append(model.step(caches, tokens[:, t : t + 1], t))
    assert torch.allclose(torch.cat(out, 1), full, atol=1e-4, rtol=1e-4)


def test_a_mixer_cannot_be_an_encoder_or_cross_attention():
    with pytest.raises(UnsupportedError, match="causal form"):
        Transformer(TransformerConfig.from_name("tiny", attention="deltanet"), "encoder")
    with pytest.raises(UnsupportedError, match="causal form"):
        Transformer(TransformerConfig.from_name("tiny", attention="deltanet"), "encdec")
    with pytest.raises(UnsupportedError, match="cross"):
        Transformer(TransformerConfig.from_name("tiny", cross_attention="deltanet"), "encdec")
    with pytest.raises(UnsupportedError, match="grouped-query"):
        Transformer(TransformerConfig.from_name("tiny", attention="deltanet", n_kv_heads=1), "decoder")


@pytest.mark.parametrize(
    "name,options,needle",
    [
        ("deltanet", {"d_model": 30, "n_heads": 4}, "divisible"),
        ("deltanet", {"chunk": 0}, "chunk"),
        ("gated_deltanet", {"expand_v": -1.0}, "expand_v"),
        ("gla", {"expand_k": 0.3, "d_model": 12, "n_heads": 4}, "expand_k"),
        ("gla", {"gate_low_rank_dim": "x"}, "gate_low_rank_dim"),
        ("deltanet", {"conv_size": 0}, "conv_size"),
    ],
)
def test_bad_mixer_options_are_one_line(name, options, needle):
    with pytest.raises(effattn.OptionError, match=needle) as e:
        effattn.create_attention(name, **options)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", MIXERS)
def test_bad_calls(name):
    m = effattn.create_attention(name, d_model=32, n_heads=2)
    with pytest.raises(ValueError, match="d_model=32"):
        m(torch.randn(1, 5, 16), causal=True)
    with pytest.raises(ValueError, match="key_padding_mask"):
        m(torch.randn(1, 5, 32), causal=True, key_padding_mask=torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one token"):
        m.step(m.new_cache(1), torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match="the cache holds 2 rows, the input 1"):
        m.prefill(m.new_cache(2), torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="the cache holds 1 rows, the input 2"):
        m.step(m.new_cache(1), torch.randn(2, 1, 32))


class _Leaky(MixerBase):
    """A mixer that reads the next token: the suite must say so."""

    def __init__(self, d_model: int = 8, n_heads: int = 1, seed: int = 0, leak: str = "future"):
        super().__init__(d_model, n_heads, seed)
        self.leak = leak
        self.proj = torch.nn.Linear(d_model, d_model)
        self.init_weights()

    def state_shapes(self, batch):
        return {"h": (batch, self.d_model)}

    def mix(self, x, state):
        u = self.proj(x)
        keeps = state is not None and self.leak != "forgets"  # "forgets": a prefill ignores the state it is given
        h = torch.cumsum(u, 1) + (state["h"][:, None] if keeps else 0)
        if self.leak == "future":
            h = h + torch.roll(u, -1, 1)
        st = MixerState()
        st["h"] = h[:, -1]
        return h, st

    def step_state(self, state, x):
        u = self.proj(x)[:, 0]
        state["h"] = state["h"] + u + (5.0 if self.leak == "step" else 0.0)
        return state["h"][:, None]


def test_the_mixer_suite_fails_a_mixer_that_sees_the_future():
    results = {r.name: r for r in run_checks(_Leaky(leak="future"))}
    assert not results["causal_by_value"].passed and not results["decoding_equals_forward"].passed
    with pytest.raises(AssertionError, match="causal_by_value"):
        check_attention(_Leaky(leak="future"))


def test_the_mixer_suite_fails_a_decoder_that_differs_and_passes_the_honest_one():
    results = {r.name: r for r in run_checks(_Leaky(leak="step"))}
    assert not results["decoding_equals_forward"].passed and results["causal_by_value"].passed
    # a mixer whose chunked form drops the state it continues from: only a second prefill shows it
    results = {r.name: r for r in run_checks(_Leaky(leak="forgets"))}
    assert not results["decoding_equals_forward"].passed and results["causal_by_value"].passed
    honest = run_checks(_Leaky(leak="none"))
    assert all(r.passed for r in honest), [(r.name, r.detail) for r in honest if not r.passed]


def _bench(run_cli, tmp_path, *args):
    out = tmp_path / "m.jsonl"
    r = run_cli("bench", *args, "--out", str(out), "--overwrite", "--min-run-time", "0.01", "--batch", "1",
                "--heads", "2", "--head-dim", "16")  # fmt: skip
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    return r, rows


def test_bench_runs_mixers_at_layer_level_and_refuses_them_at_attention_level(run_cli, tmp_path):
    r, rows = _bench(run_cli, tmp_path, "--attn", "deltanet,full", "--seq-lens", "64", "--causal")
    assert r.returncode == 0, r.stderr
    st = {x["label"]: (x["status"], x.get("reason") or "") for x in rows}
    assert st["full"][0] == "ok" and st["deltanet"][0] == "unsupported" and "--level layer" in st["deltanet"][1]
    r, rows = _bench(run_cli, tmp_path, "--attn", ",".join(MIXERS), "--seq-lens", "64,128", "--causal",
                     "--level", "layer", "--mode", "fwdbwd")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [x["status"] for x in rows] == ["ok"] * 8, [(x["label"], x["status"], x.get("reason")) for x in rows]
    assert all(x["flops"] and x["flops_basis"] == "algorithm" for x in rows)


def test_decode_sweep_of_mixers_has_a_state_that_does_not_grow(run_cli, tmp_path):
    r, rows = _bench(run_cli, tmp_path, "--attn", ",".join(MIXERS), "--seq-lens", "32,128", "--causal",
                     "--level", "layer", "--mode", "decode")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [x["status"] for x in rows] == ["ok"] * 8, [(x["label"], x["status"], x.get("reason")) for x in rows]
    size = {}
    for x in rows:
        size.setdefault(x["label"], set()).add(x["cache_bytes"])
    assert all(len(v) == 1 and min(v) > 0 for v in size.values()), size


def test_task_blocks_are_pre_norm_around_a_mixer_unless_told():
    """The papers' mixer models are pre-norm; attention keeps the post-norm of Vaswani et al.
    (TrainSpec.norm_first None: by kind). The row records the form used."""
    import effattn.tasks.mqar  # noqa: F401 - registers the task
    from effattn.errors import EffattnError
    from effattn.spec import Variant
    from effattn.tasks.base import create_task
    from effattn.tasks.train import TrainSpec, build_for_task, train_task

    task = create_task("mqar")
    tiny = dict(steps=2, batch_size=2, d_model=16, n_heads=2, n_layers=1, eval_batches=1)
    rows = {}
    for name, want in (("deltanet", True), ("linear", False)):
        model = build_for_task(task, Variant(name, {}), TrainSpec(**tiny))
        assert model.cfg.norm_first is want
        row = rows[name] = train_task(task, Variant(name, {}), 32, TrainSpec(**tiny))
        # the resolved form beside the spec as asked: --resume and the report's grouping see one spec
        assert row["norm_first"] is want and row["train_spec"]["norm_first"] is None
    # a finished run is the same point as the one --resume looks for (the spec as asked, not as resolved)
    from effattn.bench.tasksweep import task_base_row
    from effattn.store import point_key

    done = {**task_base_row(task, Variant("deltanet", {}), 32, 0, TrainSpec(**tiny)), **rows["deltanet"]}
    assert point_key(done) == point_key(task_base_row(task, Variant("deltanet", {}), 32, 0, TrainSpec(**tiny)))
    assert build_for_task(task, Variant("deltanet", {}), TrainSpec(**tiny, norm_first=False)).cfg.norm_first is False
    with pytest.raises(EffattnError, match="norm_first"):
        TrainSpec(norm_first="yes")


def test_each_layer_draws_its_own_mixer_weights_from_the_models_seed():
    """A mixer's `seed` is drawn from torch's generator when the backbone builds it, as the rest of
    the model's weights are: layers differ, the same torch seed gives the same model, another seed
    another (a fixed default had given every layer, and every training seed, the same mixers)."""

    def weights(seed):
        torch.manual_seed(seed)
        model = Transformer(TransformerConfig.from_name("tiny", attention="gated_deltanet", n_layers=2), "decoder")
        return [m.core.q_proj.weight.detach().clone() for m in model.modules() if isinstance(m, MixerLayer)]

    a, b, c = weights(0), weights(0), weights(1)
    assert len(a) >= 2 and not torch.equal(a[0], a[1])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    given = MixerLayer(16, 2, "deltanet", {"seed": 3})  # a seed the user gives is kept
    assert given.core.seed == 3


def test_mamba2_d_init_sets_the_skip_and_is_validated():
    assert torch.all(effattn.create_attention("mamba2", d_init=0.0).D == 0)
    assert torch.all(effattn.create_attention("mamba2").D == 1)
    for bad in (float("nan"), -1.0, "one"):
        with pytest.raises(effattn.errors.OptionError, match="d_init"):
            effattn.create_attention("mamba2", d_init=bad)


def test_the_bench_watch_sees_a_mixer_that_returns_garbage():
    """At layer and model level the measured core's outputs are checked; a mixer is called with x
    alone, and its NaN or misshapen output must be a problem, not an `ok` point."""
    from effattn.bench.validate import CoreWatch

    class Garbage(_Leaky):
        def __init__(self, what="nan"):
            super().__init__(leak="none")
            self.what = what

        def mix(self, x, state):
            y, st = super().mix(x, state)
            return (y * float("nan") if self.what == "nan" else y[:, :-1]), st

    x = torch.randn(2, 6, 8)
    for what, says in (("nan", "not finite"), ("short", "shape")):
        m = Garbage(what)
        with CoreWatch(m) as w:
            m(x, causal=True)
        assert any(says in p for p in w.problems), (what, w.problems)
    honest = _Leaky(leak="none")
    with CoreWatch(honest) as w:
        honest(x, causal=True)
    assert not w.problems
