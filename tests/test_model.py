"""The backbone trains a few steps in each shape with each plugin, on CPU."""

import pytest
import torch

import effattn
from effattn.errors import UnsupportedError
from effattn.model import TransformerConfig, build_model, sinusoidal_positions

SHAPES = ["encoder", "decoder", "encdec"]


def _loss(model, shape, x, y):
    if shape == "encoder":
        return torch.nn.functional.cross_entropy(model(x), y)
    if shape == "decoder":
        logits = model(x[:, :-1])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    tgt = x.flip(1)  # learn to reverse
    logits = model(x, tgt[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1))


def _trainable_pairs():
    """Every built-in of ours (the wrappers of other libraries are checked in tests/test_peers.py),
    with its first small option set; not flex, which has no backward on CPU."""
    for name in effattn.list_attention():
        entry = effattn.get_entry(name)
        if entry.source != "builtin" or entry.facts.wraps or entry.availability("cpu") is not None:
            continue
        for shape in SHAPES:
            if shape != "encoder" and not entry.facts.supports_causal:
                continue
            if shape != "decoder" and entry.facts.causal_only:
                continue
            yield pytest.param(name, shape, id=f"{name}-{shape}")


@pytest.mark.parametrize("name,shape", list(_trainable_pairs()))
def test_trains_a_few_steps(name, shape):
    torch.manual_seed(0)
    opts = dict(next(iter(effattn.get_entry(name).facts.small_options), {}))
    cfg_extra = {}
    if shape == "encdec" and not effattn.get_entry(name).facts.supports_cross:
        cfg_extra["cross_attention"] = "full"
    model = build_model(shape, "tiny", attention=name, attention_options=opts, **cfg_extra)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 32, (8, 16), generator=g)
    y = x[:, 0] % 4  # classify the first token: learnable by any mixer
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = _loss(model, shape, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], f"loss did not fall: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_padding_in_encoder_changes_nothing_on_padded_tokens():
    torch.manual_seed(0)
    model = build_model("encoder", "tiny").eval()
    x = torch.randint(0, 32, (2, 10))
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[:, 7:] = True
    x2 = x.clone()
    x2[:, 7:] = (x2[:, 7:] + 5) % 32
    assert torch.allclose(model(x, key_padding_mask=kpm), model(x2, key_padding_mask=kpm), atol=1e-6)


def test_refuses_a_plugin_that_cannot_do_the_shape():
    class NoCausal(torch.nn.Module):
        def forward(self, q, k, v, causal=False, key_padding_mask=None):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    from effattn import registry

    effattn.register_attention("zz_nocausal")(NoCausal)
    try:
        build_model("encoder", "tiny", attention="zz_nocausal")
        with pytest.raises(UnsupportedError, match="does not support causal"):
            build_model("decoder", "tiny", attention="zz_nocausal")
        with pytest.raises(UnsupportedError, match="cross-attention"):
            build_model("encdec", "tiny", attention="full", cross_attention="zz_nocausal")
    finally:
        registry._REGISTRY.pop("zz_nocausal", None)


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerConfig.from_name("huge")
    assert TransformerConfig.from_name("base").d_model == 512


def test_sinusoidal_positions_match_formula():
    pe = sinusoidal_positions(50, 16)
    pos, i = 7, 3
    assert abs(pe[pos, 2 * i].item() - torch.sin(torch.tensor(pos / 10000 ** (2 * i / 16))).item()) < 1e-6
    assert abs(pe[pos, 2 * i + 1].item() - torch.cos(torch.tensor(pos / 10000 ** (2 * i / 16))).item()) < 1e-6
