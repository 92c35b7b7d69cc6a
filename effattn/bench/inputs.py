"""Inputs for a timing/error point: random (default) or taken from a trained backbone.

With `--inputs trained`, q, k and v are what the first attention layer of a backbone trained on
MQAR computes on an MQAR sequence of the point's length. Trained attention is peaked, so
approximations err differently there than on Gaussian noise. The backbone (d_model = heads x
head_dim, so the shapes match the sweep's) is trained once and cached on disk, so isolated
workers reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from ..env import cache_dir

TRAIN = dict(task="mqar", num_pairs=8, vocab=128, seq_len=64, steps=300, batch_size=32, lr=1e-3, n_layers=2, seed=0)


def _cache_path(heads: int, head_dim: int) -> str:
    key = hashlib.sha1(
        json.dumps({**TRAIN, "heads": heads, "head_dim": head_dim}, sort_keys=True).encode()
    ).hexdigest()[:12]
    return os.path.join(cache_dir(), f"trained-mqar-{key}.pt")


def trained_model(heads: int, head_dim: int, log=None):
    from ..spec import Variant
    from ..tasks import create_task
    from ..tasks.train import TrainSpec, build_for_task, train_task

    task = create_task(TRAIN["task"], num_pairs=TRAIN["num_pairs"], vocab=TRAIN["vocab"])
    spec = TrainSpec(
        steps=TRAIN["steps"],
        batch_size=TRAIN["batch_size"],
        lr=TRAIN["lr"],
        d_model=heads * head_dim,
        n_layers=TRAIN["n_layers"],
        n_heads=heads,
        eval_batches=2,
    )
    path = _cache_path(heads, head_dim)
    torch.manual_seed(TRAIN["seed"])
    model = build_for_task(task, Variant("full", {}), spec)
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), task, json.loads(open(path + ".json").read()) if os.path.exists(path + ".json") else {}
    if log:
        log(f"--inputs trained: training a {heads}x{head_dim} backbone on MQAR once ({TRAIN['steps']} steps)")
    holder = {}

    def capture(*_):
        pass

    res = train_task(
        task, Variant("full", {}), TRAIN["seq_len"], spec, TRAIN["seed"], progress=capture, keep_model=holder
    )
    model = holder["model"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Written under a private name and renamed: processes that share the cache (isolated points,
    # Ray workers on one node) never read a half-written file.
    info = {"trained_on": TRAIN, "test_accuracy": res["test_accuracy"], "final_loss": res["final_loss"]}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp + ".json", "w") as f:
        json.dump(info, f)
    os.replace(tmp + ".json", path + ".json")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval(), task, info


def trained_qkv(batch: int, heads: int, head_dim: int, n: int, seed: int, log=None):
    """(q, k, v), each (batch, heads, n, head_dim), from the trained backbone's first layer."""
    model, task, info = trained_model(heads, head_dim, log)
    g = torch.Generator().manual_seed(seed + n)
    tokens, _, _ = task.batch(batch, max(n, 3 * task.num_pairs), g)
    tokens = tokens[:, :n]
    got = {}
    core = model.decoder[0].self_attn.core
    hook = core.register_forward_pre_hook(lambda mod, args, kwargs: got.update(qkv=args[:3]), with_kwargs=True)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        hook.remove()
    return tuple(t.contiguous() for t in got["qkv"]), info
