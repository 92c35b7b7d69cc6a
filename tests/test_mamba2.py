"""`mamba2` against an independent reference: the plain-PyTorch path of Hugging Face transformers'
`Mamba2Mixer` (models/mamba2/modeling_mamba2.py: on CPU without the CUDA kernels its forward runs
`causal_conv1d_fn` and `mamba2_chunk_scan` in torch), with HF's weights loaded into ours by name.

HF's reference computes in float32 whatever the layer's dtype (A = -exp(A_log.float()); its chunk
scan casts x, B, C and dt with .float(); its gated RMSNorm works in float32). Ours runs in float64,
given the A_log whose float64 exponent is HF's float32 A, so the two agree to float32 rounding
(measured 1e-7 relative to the largest value, forward and every gradient), and a wrong formula
shows as 1e-2 or more: the last test breaks one weight on purpose to show the check can fail."""

import pytest
import torch

import effattn

modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2", reason="needs transformers (peers extra)")


def _pair(groups: int, chunk: int):
    from transformers import Mamba2Config

    cfg = Mamba2Config(
        hidden_size=32, num_heads=4, head_dim=16, expand=2, state_size=8, n_groups=groups, chunk_size=8,
        conv_kernel=4, use_bias=False, use_conv_bias=True, num_hidden_layers=1,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = modeling.Mamba2Mixer(cfg, layer_idx=0).double()
    with torch.no_grad():  # HF's init leaves the conv bias and norm at defaults: perturb them so they count
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = effattn.create_attention("mamba2", d_model=32, n_heads=4, state_size=8, expand=2, n_groups=groups,
                                    conv_size=4, chunk=chunk).double()  # fmt: skip
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    state["A_log"] = torch.log(torch.exp(hf.A_log.detach().float()).double())  # HF's float32 A
    ours.load_state_dict(state, strict=True)
    return hf, ours


@pytest.mark.parametrize("groups,n,chunk", [(1, 19, 8), (1, 40, 5), (2, 40, 64)])
def test_mamba2_equals_hf_mamba2mixer_in_float64(groups, n, chunk):
    hf, ours = _pair(groups, chunk)
    hf.eval(), ours.eval()  # (HF's training path tries the fused kernel first; eval takes the torch path)
    x = torch.randn(2, n, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.randn(2, n, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = hf(xa), ours(xb, causal=True)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    fwd = float((ya - yb).detach().abs().max() / ya.abs().max())
    gx = float((xa.grad - xb.grad).abs().max() / xa.grad.abs().max())
    ours_p = dict(ours.named_parameters())
    worst = max(
        float((p.grad - ours_p[k].grad).abs().max() / p.grad.abs().max().clamp_min(1e-300))
        for k, p in hf.named_parameters()
        if k != "A_log"  # ours is differentiated at log of HF's float32 exp: the same A, another chain rule
    )
    a_grad = float((hf.A_log.grad - ours.A_log.grad).abs().max() / hf.A_log.grad.abs().max())
    print(f"mamba2 groups={groups} n={n} chunk={chunk}: forward {fwd:.1e}, dx {gx:.1e}, worst parameter {worst:.1e}, "
          f"A_log {a_grad:.1e}")  # fmt: skip
    assert fwd < 1e-6 and gx < 1e-6 and worst < 2e-6 and a_grad < 2e-6  # float32 rounding, see above


def test_the_comparison_sees_a_wrong_weight():
    hf, ours = _pair(1, 8)
    with torch.no_grad():
        ours.D.mul_(1.01)  # a one-per-cent error in the skip connection
    x = torch.randn(2, 19, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ya, yb = hf.eval()(x), ours.eval()(x, causal=True)
    assert float((ya - yb).abs().max() / ya.abs().max()) > 1e-4
