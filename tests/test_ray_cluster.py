"""`--executor ray` on a cluster of several nodes (simulated on this machine by
`ray.cluster_utils.Cluster`: separate raylets, each with its own resources)."""

import pytest

from effattn.bench import SweepSpec, run_sweep
from effattn.bench.executors import RayExecutor
from effattn.spec import parse_variants

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'effattn[ray]'")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1, num_gpus=1)  # a GPU in name only: this machine has none
    ray.init(address=c.address)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def test_points_spread_over_nodes_with_the_resources_they_ask(cluster, tmp_path):
    spec = SweepSpec(
        seq_lens=[64], variants=parse_variants("full,linear,sliding_window:window=16"), min_run_time_s=0.02
    )
    rows = run_sweep(spec, str(tmp_path / "n.jsonl"), progress=False, executor=RayExecutor(cpus_per_point=1))
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 3
    assert len({r["worker"]["ray_node_id"] for r in rows}) >= 2  # three chains over three 1-CPU nodes
    assert all(r["worker"]["resources"] == {"CPU": 1.0} for r in rows)  # a CPU sweep asks no GPU


def test_cuda_sweep_asks_one_gpu_per_point(cluster, tmp_path):
    ex = RayExecutor(cpus_per_point=1)
    assert ex.resolve_device("auto") == "cuda"  # the cluster has a GPU
    spec = SweepSpec(seq_lens=[64], variants=parse_variants("full,linear"), device="cuda", min_run_time_s=0.02)
    rows = run_sweep(spec, str(tmp_path / "g.jsonl"), progress=False, executor=ex)
    gpu_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))
    for r in rows:  # both ran, one after the other, on the only node with a GPU, holding it
        assert r["worker"]["resources"] == {"CPU": 1.0, "GPU": 1.0}
        assert r["worker"]["ray_node_id"] == gpu_node
        # the GPU is fictitious, so the point fails, and says why instead of crashing the sweep
        assert r["status"] == "error" and "CUDA" in r["reason"]
