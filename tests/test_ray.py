"""`--executor ray`: a real local Ray instance (2 CPUs) runs small sweeps end to end."""

import json
import os
import sys

import pytest

from effattn.bench import SweepSpec, run_sweep
from effattn.bench.executors import RayExecutor, check_ray_address
from effattn.bench.sweep import read_rows
from effattn.errors import EffattnError
from effattn.spec import Variant, parse_variants

try:
    import ray
except ImportError:  # the cluster tests skip, saying why; the rest run
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="Ray is an optional extra: pip install 'effattn[ray]'")


@pytest.fixture(scope="module")
def ray_address(plugin_site):
    """A local Ray instance with 2 CPUs. Its workers find the demo plugins through PYTHONPATH,
    which they inherit from the process that starts the instance."""
    import logging

    if ray is None:
        pytest.skip("Ray is an optional extra: pip install 'effattn[ray]'")
    if ray.is_initialized():
        ray.shutdown()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_site), old) if p)
    try:
        ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    yield ctx.address_info["address"]
    ray.shutdown()


def _spec(lens=(64, 128, 256)):
    # naive runs out of the 1.2 MB budget at 128 (then 256 is skipped); linformer is unsupported
    # (causal); full runs everywhere: four statuses in nine points.
    return SweepSpec(
        seq_lens=list(lens),
        variants=parse_variants("full,naive,linformer:proj_len=16:max_len=256"),
        min_run_time_s=0.02,
        memory_budget_bytes=1_200_000,
        causal=True,
    )


def _main(args, capsys):
    """`effattn ARGS` in this process: for failures that need no new process."""
    from effattn.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr().err


def _points(rows):
    return {(r["label"], r["seq_len"], r["status"]) for r in rows}


@pytest.mark.slow
def test_ray_sweep_equals_local_and_streams_rows(ray_address, tmp_path):
    local = run_sweep(_spec(), str(tmp_path / "local.jsonl"), progress=False)
    out = tmp_path / "ray.jsonl"
    seen = []

    def on_row(row):  # each row is on disk before the next one is taken
        seen.append(len(read_rows(str(out))))

    rows = run_sweep(_spec(), str(out), progress=False, executor=RayExecutor(cpus_per_point=1), on_row=on_row)
    assert _points(rows) == _points(local)
    assert {s for _, _, s in _points(rows)} == {"ok", "oom", "skipped", "unsupported"}
    assert seen == list(range(1, len(rows) + 1))
    assert _points(read_rows(str(out))) == _points(rows)
    assert [json.loads(line) for line in open(out)] == rows  # plain JSON, nothing torn, nothing Ray-specific
    for r in rows:
        assert r["executor"] == "ray" and r["isolated"] is True
        assert r["env"]["argv"] == " ".join(sys.argv)
        if r["status"] == "skipped":
            continue
        # measured on a Ray worker, in its environment: its own process, one thread per CPU given
        assert r["worker"]["pid"] != os.getpid() and r["worker"]["ray_node_id"]
        assert r["env"]["threads"] == 1
        assert r["matmul_peak_gflops"] > 0
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["time_ms"] > 0 and r["peak_mem_bytes"] > 0 for r in ok)
    assert all(r["rel_err_vs_own_dense"] < 1e-5 for r in ok)


@pytest.mark.slow
def test_ray_resume_completes_a_local_file(ray_address, tmp_path):
    out = str(tmp_path / "r.jsonl")
    run_sweep(_spec(lens=(64,)), out, progress=False)
    before = open(out).read()
    rows = run_sweep(_spec(), out, resume=True, progress=False, executor=RayExecutor())
    assert open(out).read().startswith(before)  # earlier rows untouched
    assert {r["seq_len"] for r in rows} == {128, 256}
    all_rows = read_rows(out)
    keys = [(r["label"], r["seq_len"]) for r in all_rows]
    assert len(keys) == len(set(keys)) == 9  # every point exactly once
    # resuming a finished file on Ray measures nothing
    assert run_sweep(_spec(), out, resume=True, progress=False, executor=RayExecutor()) == []


@pytest.mark.slow
def test_dead_worker_is_retried_once_then_recorded(ray_address, with_plugins, tmp_path):
    marker_once, marker_always = str(tmp_path / "once"), str(tmp_path / "always")
    spec = SweepSpec(
        seq_lens=[64, 128],
        min_run_time_s=0.02,
        variants=[
            Variant("demo_faulty", {"kill_parent_times": 1, "at_len": 128, "marker": marker_once}),
            Variant("demo_faulty", {"kill_parent_times": 9, "at_len": 64, "marker": marker_always}),
            Variant("full", {}),
        ],
    )
    rows = run_sweep(spec, str(tmp_path / "f.jsonl"), progress=False, executor=RayExecutor())
    by = {(r["options"].get("marker"), r["seq_len"]): r for r in rows}
    # one death: the retry measured the point
    assert open(marker_once).read().count("killed worker") == 1
    assert by[(marker_once, 128)]["status"] == "ok" and by[(marker_once, 64)]["status"] == "ok"
    # a worker that dies every time: tried twice, then the point is an error and the variant goes on
    assert open(marker_always).read().count("killed worker") == 2
    dead = by[(marker_always, 64)]
    assert dead["status"] == "error" and "died 2 times" in dead["reason"]
    assert by[(marker_always, 128)]["status"] == "ok"
    assert by[(None, 64)]["status"] == by[(None, 128)]["status"] == "ok"  # other points unharmed


@pytest.mark.slow
def test_interrupted_ray_sweep_keeps_rows_and_resumes(ray_address, tmp_path):
    out = str(tmp_path / "i.jsonl")
    spec = _spec(lens=(64, 128))

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, progress=False, executor=RayExecutor(), on_row=stop)
    assert len(read_rows(out)) == 1
    run_sweep(spec, out, resume=True, progress=False)  # (resuming on Ray is tested above)
    assert _points(read_rows(out)) == _points(run_sweep(spec, str(tmp_path / "l.jsonl"), progress=False))


@pytest.mark.slow
def test_cli_ray_sweep_and_task(ray_address, run_cli, tmp_path):
    out = tmp_path / "c.jsonl"
    r = run_cli(
        "bench",
        "--executor",
        "ray",
        "--ray-address",
        ray_address,
        "--seq-lens",
        "64",
        "--attn",
        "full,linear",
        "--min-run-time",
        "0.02",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "via ray (1 node, 2 CPUs, 0 GPUs; 1 CPUs per point)" in r.stderr
    rows = read_rows(str(out))
    assert {(x["label"], x["seq_len"], x["status"]) for x in rows} == {("full", 64, "ok"), ("linear", 64, "ok")}
    assert all(x["executor"] == "ray" for x in rows)
    assert "time exponent" in r.stdout

    tout = tmp_path / "t.jsonl"
    r = run_cli(
        "bench",
        "--executor",
        "ray",
        "--ray-address",
        ray_address,
        "--task",
        "mqar",
        "--attn",
        "full,linear",
        "--steps",
        "3",
        "--out",
        str(tout),
    )
    assert r.returncode == 0, r.stderr
    rows = read_rows(str(tout))
    assert sorted((x["label"], x["seed"], x["status"]) for x in rows) == [("full", 0, "ok"), ("linear", 0, "ok")]
    assert all(x["worker"]["pid"] and x["env"]["threads"] == 1 for x in rows)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,msg",
    [
        (["--executor", "ray", "--cpus-per-point", "64"], "no node of the Ray cluster has 64 CPUs"),
        (["--executor", "ray", "--device", "cuda"], "--device cuda: the Ray cluster has no GPUs"),
    ],
)
def test_cli_ray_cluster_cannot_run_it(ray_address, capsys, tmp_path, args, msg):
    out = tmp_path / "x.jsonl"  # in this process, which is connected to the test cluster already
    code, err = _main(["bench", *args, "--seq-lens", "64", "--attn", "full", "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("effattn: error:"), err
    assert msg in lines[0]
    assert not out.exists()
    assert ray.is_initialized()  # a cluster effattn did not start is left running


# --- bad input that needs no cluster -----------------------------------------------------------
@pytest.mark.parametrize(
    "args,msg",
    [
        (["--ray-address", "127.0.0.1:6379"], "--ray-address applies only to --executor ray"),
        (["--cpus-per-point", "2"], "--cpus-per-point applies only to --executor ray"),
        (["--executor", "ray", "--find-max-len"], "--find-max-len runs here only"),
        (["--executor", "ray", "--cpus-per-point", "0"], "--cpus-per-point"),
        (["--executor", "dask"], "--executor"),
    ],
)
def test_cli_ray_bad_input(capsys, tmp_path, args, msg):
    out = tmp_path / "x.jsonl"
    code, err = _main(["bench", *args, "--seq-lens", "64", "--attn", "full", "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("effattn: error:"), err
    assert msg in lines[0]
    assert not out.exists()


@needs_ray
@pytest.mark.parametrize(
    "address,msg", [("nonsense", "expected HOST:PORT"), ("127.0.0.1:1", "no Ray cluster answers there")]
)
def test_cli_ray_bad_address_fails_fast(run_cli, tmp_path, address, msg):
    out = tmp_path / "x.jsonl"
    r = run_cli(
        "bench",
        "--executor",
        "ray",
        "--ray-address",
        address,
        "--seq-lens",
        "64",
        "--attn",
        "full",
        "--out",
        str(out),
        timeout=60,
    )  # Ray alone would retry 127.0.0.1:1 for minutes
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("effattn: error:"), r.stderr
    assert msg in lines[0]
    assert not out.exists()


def test_cli_ray_not_installed(run_cli, tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray (simulated)')\n")
    r = run_cli(
        "bench",
        "--executor",
        "ray",
        "--seq-lens",
        "64",
        "--attn",
        "full",
        "--out",
        str(tmp_path / "x.jsonl"),
        env_extra={"PYTHONPATH": str(fake.parent)},
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "effattn: error: --executor ray needs Ray, which is not installed here: pip install 'effattn[ray]'"
    )


def test_check_ray_address_parsing():
    check_ray_address("auto")
    for bad in ("localhost", "host:port", ":6379", "host:0", "host:70000"):
        with pytest.raises(EffattnError, match="expected HOST:PORT"):
            check_ray_address(bad)
    with pytest.raises(EffattnError, match="no Ray cluster answers"):
        check_ray_address("ray://127.0.0.1:1")
    with pytest.raises(EffattnError, match="> 0"):
        RayExecutor(cpus_per_point=0)


# --- the executor contract, without Ray ---------------------------------------------------------
class _LastFirst:
    """Runs the most recently submitted job first: completions arrive out of order, as on Ray
    (concurrent, so each variant is its own chain of one-point groups, as on Ray)."""

    name = "shuffled"
    concurrent = True

    def __init__(self, lose_after=None):
        self.jobs, self.started, self.lose_after, self.cancelled = [], [], lose_after, False

    def open(self, device):
        pass

    def submit(self, job):
        self.jobs.append(job)

    def pending(self):
        return len(self.jobs)

    def next_done(self):
        from effattn.bench.executors import ExecutorLost

        if self.lose_after is not None and len(self.started) == self.lose_after:
            raise ExecutorLost("lost the cluster (simulated)")
        job = self.jobs.pop()
        _, (n, group) = job.info  # (the chain, (the length, the variants of the group))
        self.started += [(v.label, n) for v in group]
        return job, job.fn(*job.args)

    def cancel(self):
        self.cancelled = True

    def close(self):
        pass


def test_out_of_order_executor_keeps_each_variants_lengths_in_order(tmp_path):
    ex = _LastFirst()
    rows = run_sweep(_spec(), str(tmp_path / "s.jsonl"), progress=False, executor=ex)
    assert _points(rows) == _points(run_sweep(_spec(), str(tmp_path / "l.jsonl"), progress=False))
    assert [r["label"] for r in rows][:2] != ["full", "full"]  # variants did interleave
    for label in {v for v, _ in ex.started}:
        lens = [n for v, n in ex.started if v == label]
        assert lens == sorted(lens)  # a longer length never started before a shorter one finished
    assert ("naive", 256) not in ex.started and ("naive", 128) in ex.started  # 128 is oom: 256 skipped, not run


def test_lost_executor_keeps_finished_rows(tmp_path):
    from effattn.bench.executors import ExecutorLost

    out = str(tmp_path / "x.jsonl")
    ex = _LastFirst(lose_after=2)
    with pytest.raises(ExecutorLost):
        run_sweep(_spec(), out, progress=False, executor=ex)
    assert ex.cancelled and len(read_rows(out)) == 2
    run_sweep(_spec(), out, resume=True, progress=False)
    assert len(read_rows(out)) == 9
