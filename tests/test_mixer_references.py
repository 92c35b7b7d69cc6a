"""The GLA, DeltaNet and Gated DeltaNet mixers against the layers their authors' library ships.

flash-linear-attention (the `peers` extra) defines the papers' layers in fla/layers/{gla,
delta_net,gated_deltanet}.py. Those files import fla's Triton kernels and modules, which do not
load on a CPU machine, so each file is loaded by path with these put in their place:

- the recurrences: fla-core's own plain-PyTorch references, fla/ops/<op>/naive.py (the same ones
  tests/test_gated_linear.py checks the cores against), with what the layers ask the kernels to do
  besides (`use_qk_l2norm_in_kernel`: q, k scaled by rsqrt(sum x^2 + 1e-6), fla's l2norm;
  `use_beta_sigmoid_in_kernel`; `use_gate_in_kernel`: g = -exp(A_log) softplus(g + dt_bias), as
  fla/ops/gated_delta_rule/gate.py's `naive_gdn_gate` says) done here around them;
- fla.modules' ShortConvolution (a depthwise nn.Conv1d, causal, optional SiLU), RMSNorm and
  FusedRMSNormGated (RMSNorm(o) * weight * SiLU(g)), written here in a few lines each;
- the cache and padding helpers of fla/layers/utils.py, as the no-cache, no-padding identities.

So the projections, the gates' formulas, what is convolved and normalised and in what order are
fla's code; the weights are copied from fla's layer into ours by name (strict: the names are the
same). fla's naive recurrences compute in float32 whatever they are given, so the two agree to
float32 rounding, about 1e-7 of the largest value, forward and every gradient; a broken weight
shows as 1e-3 or more (the last test).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effattn
from effattn import fla_reference

TOL = 1e-5  # fla's references run in float32 (measured up to 2e-6 on a gradient summed over n tokens)


def _layer_file(name: str) -> Path | None:
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:  # fla-core and flash-linear-attention share `fla`
        p = Path(root) / "layers" / f"{name}.py"
        if p.exists():
            return p
    return None


class _ShortConvolution(nn.Conv1d):
    def __init__(self, hidden_size, kernel_size, bias=False, activation="silu", **_):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, padding=kernel_size - 1, bias=bias)
        self.activation, self.backend = activation, None

    def forward(self, x, cache=None, output_final_state=False, cu_seqlens=None, **_):
        assert cache is None and cu_seqlens is None
        y = super().forward(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
        return (F.silu(y) if self.activation in ("silu", "swish") else y), None


class _RMSNorm(nn.Module):
    def __init__(self, hidden_size, elementwise_affine=True, eps=1e-5, **_):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(hidden_size))

    def forward(self, x, g=None):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return y if g is None else y * F.silu(g)


def _l2(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _stubs(naive) -> dict[str, types.ModuleType]:
    """The modules fla's layer files import, as described in the module docstring."""
    m = {n: types.ModuleType(n) for n in ("fla", "fla.layers", "fla.layers.utils", "fla.modules",
                                          "fla.modules.activations", "fla.modules.convolution",
                                          "fla.ops", "fla.ops.gla", "fla.ops.delta_rule",
                                          "fla.ops.gated_delta_rule")}  # fmt: skip
    u = m["fla.layers.utils"]
    u.get_layer_cache = lambda module, past_key_values: None
    u.update_layer_cache = lambda module, past_key_values, **kw: None
    u.unpad_hidden_states = lambda hidden_states, cu_seqlens, attention_mask, q_len: (hidden_states, None, cu_seqlens)
    u.repad_hidden_states = lambda hidden_states, indices, batch_size, q_len: hidden_states
    mods = m["fla.modules"]
    mods.ShortConvolution, mods.RMSNorm, mods.FusedRMSNormGated = _ShortConvolution, _RMSNorm, _RMSNorm
    m["fla.modules.activations"].ACT2FN = {"swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid}
    m["fla.modules.activations"].elu_p1 = lambda x: F.elu(x) + 1
    m["fla.modules.convolution"].causal_conv1d = lambda **kw: pytest.fail("the fused convolution is not used")

    def gla(q, k, v, gk=None, g=None, initial_state=None, output_final_state=False, **_):
        return naive["gla"].naive_recurrent_gla(q, k, v, gk if gk is not None else g)

    def delta(q, k, v, beta, use_qk_l2norm_in_kernel=False, **_):
        if use_qk_l2norm_in_kernel:
            q, k = _l2(q), _l2(k)
        t = [x.transpose(1, 2) for x in (q, k, v, beta)]  # fla's recurrence takes (B, H, T, D)
        o, _ = naive["delta"].delta_rule_recurrence(*t, output_final_state=False)
        return o.transpose(1, 2), None

    def gated(q, k, v, g, beta, A_log, dt_bias, use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
              use_gate_in_kernel=False, allow_neg_eigval=False, **_):  # fmt: skip
        assert use_qk_l2norm_in_kernel and use_beta_sigmoid_in_kernel and use_gate_in_kernel and not allow_neg_eigval
        g = -A_log.float().exp() * F.softplus(g.float() + dt_bias.float())  # naive_gdn_gate
        o, _ = naive["gated"].naive_recurrent_gated_delta_rule(_l2(q), _l2(k), v, beta.sigmoid(), g)
        return o, None

    m["fla.ops.gla"].chunk_gla = m["fla.ops.gla"].fused_chunk_gla = m["fla.ops.gla"].fused_recurrent_gla = gla
    m["fla.ops.delta_rule"].chunk_delta_rule = m["fla.ops.delta_rule"].fused_recurrent_delta_rule = delta
    ops = m["fla.ops.gated_delta_rule"]
    ops.chunk_gated_delta_rule = ops.fused_recurrent_gated_delta_rule = gated
    return m


@pytest.fixture
def fla_layer(monkeypatch):
    naive = {"gla": fla_reference.load("gla/naive"), "delta": fla_reference.load("delta_rule/naive"),
             "gated": fla_reference.load("gated_delta_rule/naive")}  # fmt: skip
    if any(v is None for v in naive.values()):
        pytest.skip("fla-core's naive references are not installed: pip install 'effattn[peers]'")

    def load(file: str, cls: str, **kwargs):
        p = _layer_file(file)
        if p is None:
            pytest.skip("flash-linear-attention's layer files are not installed: pip install 'effattn[peers]'")
        for name, mod in _stubs(naive).items():
            monkeypatch.setitem(sys.modules, name, mod)
        spec = importlib.util.spec_from_file_location(f"_fla_layer_{file}", p)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        torch.manual_seed(0)
        layer = getattr(mod, cls)(**kwargs).double()
        if hasattr(layer, "_use_fused_qkv_conv"):  # the per-projection convolutions, not the fused one
            layer._use_fused_qkv_conv = lambda **kw: False
        with torch.no_grad():  # fla's init leaves norms at 1 and biases at 0: perturb so they count
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return layer

    return load


# (fla file, fla class, fla's options, our name, our options): the same layer in both spellings
CASES = {
    "gla": ("gla", "GatedLinearAttention", dict(hidden_size=32, num_heads=4, expand_k=0.5, expand_v=1.0),
            "gla", dict(d_model=32, n_heads=4, chunk=5)),
    "gla-conv": ("gla", "GatedLinearAttention", dict(hidden_size=32, num_heads=4, use_short_conv=True, conv_size=3),
                 "gla", dict(d_model=32, n_heads=4, use_short_conv=True, conv_size=3, chunk=7)),
    "deltanet": ("delta_net", "DeltaNet", dict(hidden_size=32, num_heads=4, conv_size=4),
                 "deltanet", dict(d_model=32, n_heads=4, conv_size=4, chunk=5)),
    "gated_deltanet": ("gated_deltanet", "GatedDeltaNet",
                       dict(hidden_size=32, num_heads=4, head_dim=8, expand_v=1.0, conv_size=4),
                       "gated_deltanet", dict(d_model=32, n_heads=4, head_dim=8, conv_size=4, chunk=5)),
}  # fmt: skip


def _pair(fla_layer, case):
    file, cls, fla_opts, name, opts = CASES[case]
    ref = fla_layer(file, cls, **fla_opts)
    ours = effattn.create_attention(name, **opts).double()
    ours.load_state_dict({k: v.detach().clone() for k, v in ref.state_dict().items()}, strict=True)
    return ref, ours


def _rel(a, b) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("n", [19, 40])
@pytest.mark.parametrize("case", sorted(CASES))
def test_mixer_equals_fla_layer(fla_layer, case, n):
    ref, ours = _pair(fla_layer, case)
    x = torch.randn(2, n, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.randn(2, n, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ref(xa)[0], ours(xb, causal=True)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    mine = dict(ours.named_parameters())
    errs = {"forward": _rel(yb, ya), "dx": _rel(xb.grad, xa.grad)}
    errs.update({k: _rel(mine[k].grad, p.grad) for k, p in ref.named_parameters()})
    worst = max(errs, key=errs.get)
    print(f"{case} n={n}: forward {errs['forward']:.1e}, dx {errs['dx']:.1e}, worst {worst} {errs[worst]:.1e}")
    assert errs[worst] < TOL, errs


def test_the_comparison_sees_a_wrong_weight(fla_layer):
    ref, ours = _pair(fla_layer, "gated_deltanet")
    with torch.no_grad():
        ours.dt_bias.add_(0.05)  # a small error in the decay gate's bias
    x = torch.randn(2, 19, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _rel(ours(x, causal=True), ref(x)[0]) > 1e-3
