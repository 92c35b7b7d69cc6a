"""A point is measured correctly or says why not; nothing a user measured is lost or mixed.

Most cases are met as a user meets them: `effattn bench` / `report` / `compare` in a subprocess,
with the misbehaving plugins of tests/plugins/demo_adversarial installed as a package.
"""

import dataclasses
import functools
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import effattn
from effattn.bench import SweepSpec, measure_point
from effattn.bench.worker import MeasuringProcess
from effattn.contract import attended_pairs
from effattn.errors import EffattnError
from effattn.results import load, summary
from effattn.spec import Variant, parse_seq_lens, parse_variant
from effattn.store import ResultsFile, ResultsFileBusy, ResultsFileError, default_results_path, point_key

SMALL = ["--min-run-time", "0.01", "--heads", "2", "--head-dim", "16"]


def _rows(path):
    return [json.loads(x) for x in open(path).read().splitlines() if x.strip()]


@pytest.fixture
def adv(plugin_site, run_cli, tmp_path):
    """`effattn ...` in a subprocess that sees the adversarial plugins."""
    env = {"PYTHONPATH": str(plugin_site)}

    def run(*args, timeout=300):
        return run_cli(*args, env_extra=env, cwd=str(tmp_path), timeout=timeout)

    return run


def _one_line_error(r, needle, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------------------------ 1. every point validated
def test_wrong_shape_dtype_and_nan_outputs_are_errors_at_every_level(adv, tmp_path):
    r = adv(
        "bench",
        *SMALL,
        "--batch",
        "2",
        "--seq-lens",
        "11",
        "--attn",
        "adv_wrong_shape,adv_wrong_dtype,adv_nan,full",
        "--out",
        "r.jsonl",
    )
    assert r.returncode == 0, r.stderr
    by = {x["label"]: x for x in _rows(tmp_path / "r.jsonl")}
    assert by["adv_wrong_shape"]["status"] == "error"
    assert "output shape (2, 11, 2, 16) != (2, 2, 11, 16)" in by["adv_wrong_shape"]["reason"]
    assert by["adv_wrong_dtype"]["status"] == "error" and "dtype float64" in by["adv_wrong_dtype"]["reason"]
    assert by["adv_nan"]["status"] == "error" and "not finite" in by["adv_nan"]["reason"]
    assert by["full"]["status"] == "ok" and by["full"]["rel_err_vs_full"] == 0.0
    # inside a layer, where the projections would happily reshape a wrong output, still caught
    r = adv(
        "bench",
        *SMALL,
        "--batch",
        "2",
        "--seq-lens",
        "11",
        "--attn",
        "adv_wrong_shape,adv_nan",
        "--level",
        "layer",
        "--out",
        "l.jsonl",
    )
    assert r.returncode == 1, r.stderr  # every point an error: the sweep measured nothing (exit 1)
    by = {x["label"]: x for x in _rows(tmp_path / "l.jsonl")}
    assert by["adv_wrong_shape"]["status"] == "error" and "output shape" in by["adv_wrong_shape"]["reason"]
    assert by["adv_nan"]["status"] == "error"


def test_bad_gradients_are_errors_under_fwdbwd(adv, tmp_path):
    r = adv(
        "bench",
        *SMALL,
        "--seq-lens",
        "16",
        "--attn",
        "adv_nan_grad,adv_detached,full",
        "--mode",
        "fwdbwd",
        "--out",
        "r.jsonl",
    )
    assert r.returncode == 0, r.stderr
    by = {x["label"]: x for x in _rows(tmp_path / "r.jsonl")}
    assert by["adv_nan_grad"]["status"] == "error" and "gradient of q is not finite" in by["adv_nan_grad"]["reason"]
    assert by["adv_detached"]["status"] == "error"
    assert by["full"]["status"] == "ok"
    r = adv(
        "bench",
        *SMALL,
        "--seq-lens",
        "16",
        "--attn",
        "adv_detached",
        "--mode",
        "fwdbwd",
        "--level",
        "model",
        "--out",
        "m.jsonl",
    )
    row = _rows(tmp_path / "m.jsonl")[0]
    assert row["status"] == "error" and "no gradient reached q" in row["reason"], row


def test_attended_pairs_are_exact_for_every_builtin():
    for name in effattn.list_attention():
        e = effattn.get_entry(name)
        if not e.facts.exact or e.source != "builtin" or e.availability("cpu"):
            continue
        a = effattn.create_attention(name)
        for n in (1, 37, 300):
            for causal in (False, True) if e.facts.supports_causal else (False,):
                assert attended_pairs(a, n, n, causal) == int(a.dense_mask(n, n, causal).sum()), (name, n, causal)
    # masked attends j <= i at every length, also where its mask is never built (2^28 pairs)
    assert attended_pairs(effattn.create_attention("masked"), 16384, 16384, False) == 16384 * 16385 // 2
    assert attended_pairs(effattn.create_attention("full"), 16384, 16384, True) == 16384 * 16385 // 2


def test_a_pattern_counted_by_its_dense_mask_or_not_at_all(with_plugins):
    half = effattn.create_attention("adv_half_mask")
    assert attended_pairs(half, 100, 100, False) == 5050
    assert attended_pairs(half, 2**15, 2**15, False) is None  # too big to count whole: unknown, not n^2
    assert attended_pairs(effattn.create_attention("linear"), 10, 10, True) == 55  # approximate: the softmax's


def test_a_rate_above_the_peak_is_flagged_a_fault(monkeypatch):
    from effattn.bench import timing

    monkeypatch.setattr(timing.Reference, "gflops", lambda self: 1e-3)
    monkeypatch.setattr(timing, "_PROBE_HISTORY", {})  # no real rate seen before: 1e-3 is this run's quiet
    spec = SweepSpec(seq_lens=[64], variants=[], heads=2, head_dim=8, min_run_time_s=0.01, error=False)
    row = measure_point(spec, Variant("full", {}), 64)
    assert row["status"] == "ok" and row["peak_fraction"] > 1 and "matmul peak" in row["fault"]


def test_memory_counts_a_cache_kept_from_the_first_call(with_plugins):
    spec = SweepSpec(seq_lens=[64], variants=[], heads=2, head_dim=8, min_run_time_s=0.01, error=False)
    row = measure_point(spec, Variant("adv_cache", {}), 64)
    assert row["status"] == "ok", row
    assert row["retained_bytes"] >= 64 * 2**20 and row["peak_mem_bytes"] >= 64 * 2**20, row
    plain = measure_point(spec, Variant("full", {}), 64)
    assert plain["retained_bytes"] < 2**20 and plain["peak_mem_bytes"] < 2**20, plain


@pytest.mark.slow
def test_the_budget_is_checked_before_memory_is_taken(adv, tmp_path):
    assert parse_seq_lens("10m") == [10 * 2**20]
    r = adv(
        "bench", "--seq-lens", "10m", "--memory-budget", "1GB", "--attn", "full,naive", "--out", "r.jsonl", timeout=120
    )
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "r.jsonl")
    assert [x["status"] for x in rows] == ["oom", "oom"]
    assert all("not attempted" in x["reason"] and "input_bytes" not in x for x in rows), rows
    # with no budget, the memory this machine has left is the limit
    r = adv("bench", "--seq-lens", "10m", "--attn", "full", "--out", "a.jsonl", timeout=120)
    row = _rows(tmp_path / "a.jsonl")[0]
    assert row["status"] == "oom" and "of memory available" in row["reason"], row


@pytest.mark.slow
def test_timeout_holds_without_isolate_and_the_sweep_goes_on(adv, tmp_path):
    t0 = time.time()
    r = adv(
        "bench",
        *SMALL,
        "--seq-lens",
        "32,64",
        "--attn",
        "adv_hang,full",
        "--timeout",
        "2",
        "--out",
        "r.jsonl",
        timeout=200,
    )
    assert r.returncode == 0, r.stderr
    by = {(x["label"], x["seq_len"]): x for x in _rows(tmp_path / "r.jsonl")}
    assert by[("adv_hang", 32)]["status"] == "timeout" and "2 s timeout" in by[("adv_hang", 32)]["reason"]
    assert by[("adv_hang", 64)]["status"] == "skipped"
    assert by[("full", 32)]["status"] == "ok" and by[("full", 64)]["status"] == "ok"
    assert time.time() - t0 < 120


def test_crashes_are_errors_on_evidence_and_cost_one_point(adv, tmp_path):
    r = adv(
        "bench",
        *SMALL,
        "--seq-lens",
        "32",
        "--attn",
        "adv_crash,adv_exit,adv_raises,adv_raises:what=memoryerror,adv_chatty,full",
        "--out",
        "r.jsonl",
    )
    assert r.returncode == 0, r.stderr
    by = {x["label"]: x for x in _rows(tmp_path / "r.jsonl")}
    assert by["adv_crash"]["status"] == "error" and "SIGSEGV" in by["adv_crash"]["reason"]
    assert by["adv_exit"]["status"] == "error" and "before reporting" in by["adv_exit"]["reason"]
    # "illegal memory access" mentions memory but is no evidence of exhaustion
    assert by["adv_raises"]["status"] == "error" and "illegal memory access" in by["adv_raises"]["reason"]
    assert by["adv_raises:what=memoryerror"]["status"] == "oom"
    assert by["adv_chatty"]["status"] == "ok" and by["full"]["status"] == "ok"


@pytest.mark.slow
def test_a_plugin_printing_at_exit_does_not_break_isolated_points(adv, tmp_path):
    r = adv("bench", *SMALL, "--seq-lens", "16,32", "--attn", "adv_chatty,full", "--isolate", "--out", "r.jsonl")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert [x["status"] for x in _rows(tmp_path / "r.jsonl")] == ["ok"] * 4


@pytest.mark.slow
def test_a_sigkill_is_oom_only_with_the_kernels_evidence(plugin_site, monkeypatch):
    """A killed measuring process is `oom` only when the kernel's oom_kill count rose."""
    from effattn.bench import worker as w

    monkeypatch.setenv("PYTHONPATH", str(plugin_site))
    spec = SweepSpec(seq_lens=[16], variants=[], heads=2, head_dim=8, min_run_time_s=0.01, timeout_s=30)
    job = {"spec": spec.point_config(), "variants": [{"name": "adv_hang", "options": {}}], "n": 16}

    def run_and_kill():
        mp = MeasuringProcess()
        assert mp._start() is None
        pid = mp.proc.pid
        import threading

        threading.Timer(1.0, lambda: os.kill(pid, signal.SIGKILL)).start()
        rows, redo = mp.run(job, 30, {"adv_hang": {"label": "adv_hang", "seq_len": 16}})
        mp.close()
        assert redo == [] and len(rows) == 1
        return rows[0]

    row = run_and_kill()
    assert row["status"] == "error" and "SIGKILL" in row["reason"], row
    counts = iter(range(100))
    monkeypatch.setattr(w, "_oom_kills", lambda: next(counts))
    row = run_and_kill()
    assert row["status"] == "oom" and "OOM killer" in row["reason"], row


# ------------------------------------------------------------------------ 2. one identity per point
def test_the_identity_of_a_point_covers_everything_that_changes_it():
    base = {
        "label": "full",
        "seq_len": 64,
        "device": "cpu",
        "dtype": "float32",
        "batch": 1,
        "heads": 2,
        "head_dim": 8,
        "causal": False,
        "mode": "fwd",
        "level": "attention",
        "inputs": "random",
        "seed": 0,
    }
    for field, other in (("inputs", "trained"), ("seed", 1), ("heads", 8), ("batch", 4), ("head_dim", 16)):
        assert point_key(base) != point_key({**base, field: other}), field
    old = {k: v for k, v in base.items() if k not in ("inputs", "seed")}  # a row from before those fields
    assert point_key(old) == point_key(base)


@pytest.mark.slow
def test_resume_with_another_configuration_measures_it_and_fits_apart(adv, tmp_path):
    args = (
        "bench",
        "--min-run-time",
        "0.01",
        "--head-dim",
        "8",
        "--seq-lens",
        "64,128",
        "--attn",
        "full,linear",
        "--out",
        "r.jsonl",
    )
    assert adv(*args, "--heads", "2").returncode == 0
    r = adv(*args, "--heads", "4", "--resume")
    assert r.returncode == 0, r.stderr
    r = adv(*args, "--heads", "4", "--seed", "3", "--resume")
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "r.jsonl")
    assert len(rows) == 12 and len({point_key(x) for x in rows}) == 12
    s = summary(load(str(tmp_path / "r.jsonl")))
    assert len(s) == 6 and {"full [heads=2, seed=0]", "linear [heads=4, seed=3]"} <= set(s["label"]), s["label"]
    # the run's own summary fits only its own configuration: one line per variant
    scaling = r.stdout.split("scaling (log-log fit)\n", 1)[1].split("\n\n", 1)[0]  # the table, to its blank line
    assert "heads=" not in scaling and len([x for x in scaling.splitlines() if x.strip()]) == 3, scaling


def test_compare_pairs_only_equal_configurations(adv, tmp_path):
    assert adv("bench", *SMALL, "--seq-lens", "64,128", "--attn", "full", "--out", "a.jsonl").returncode == 0
    rows = _rows(tmp_path / "a.jsonl")
    (tmp_path / "h8.jsonl").write_text("".join(json.dumps({**x, "heads": 8}) + "\n" for x in rows))
    r = adv("compare", "a.jsonl", "h8.jsonl")
    _one_line_error(r, "share no measured point of the same configuration")
    assert "heads=2" in r.stderr and "heads=8" in r.stderr
    mixed = [rows[0], {**rows[1], "heads": 8}]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(x) + "\n" for x in mixed))
    r = adv("compare", "a.jsonl", "mixed.jsonl")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 points compared" in r.stdout and "1 point(s) only in a.jsonl" in r.stdout
    assert "1 point(s) only in mixed.jsonl" in r.stdout and "heads=8" in r.stdout


# ------------------------------------------------------------------------ 3. a results file is never damaged
def test_resume_repairs_a_torn_last_line_and_keeps_the_new_row(adv, tmp_path):
    assert adv("bench", *SMALL, "--seq-lens", "16,32", "--attn", "full", "--out", "r.jsonl").returncode == 0
    text = (tmp_path / "r.jsonl").read_text()
    first, second = text.splitlines()
    (tmp_path / "r.jsonl").write_text(first + "\n" + second[: len(second) // 2])  # killed mid-write
    r = adv("bench", *SMALL, "--seq-lens", "16,32", "--attn", "full", "--out", "r.jsonl", "--resume")
    assert r.returncode == 0, r.stderr
    assert "cut off mid-write" in r.stderr and "r.jsonl.torn" in r.stderr
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]  # every line parses: no row glued onto the fragment
    assert [(x["seq_len"], x["status"]) for x in rows] == [(16, "ok"), (32, "ok")]
    assert (tmp_path / "r.jsonl.torn").read_text() == second[: len(second) // 2] + "\n"


@pytest.mark.slow
def test_a_second_writer_is_refused_with_the_holders_name(adv, plugin_site, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "effattn.cli",
            "bench",
            *SMALL,
            "--seq-lens",
            "16",
            "--attn",
            "adv_hang",
            "--timeout",
            "15",
            "--out",
            "r.jsonl",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while not (tmp_path / "r.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        for extra in ((), ("--resume",), ("--overwrite",)):
            r = adv("bench", *SMALL, "--seq-lens", "16", "--attn", "full", "--out", "r.jsonl", *extra)
            _one_line_error(r, "is being written by another run")
            assert f"pid {first.pid}" in r.stderr and "effattn.cli bench" in r.stderr, r.stderr
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert [x["status"] for x in _rows(tmp_path / "r.jsonl")] == ["timeout"]


def test_results_file_is_claimed_atomically(tmp_path):
    path = str(tmp_path / "r.jsonl")
    with ResultsFile(path, "new") as a:
        with pytest.raises(ResultsFileBusy):
            ResultsFile(path, "new").open()
        a.append({"label": "full", "seq_len": 1, "status": "ok"})
    with pytest.raises(ResultsFileError, match="already holds results"):
        ResultsFile(path, "new").open()
    names = {default_results_path(str(tmp_path / "res")) for _ in range(5)}  # same second, five names
    assert len(names) == 5 and all(os.path.exists(n) for n in names)


@pytest.mark.slow
def test_find_max_len_appends_and_follows_resume(adv, tmp_path):
    assert adv("bench", *SMALL, "--seq-lens", "16", "--attn", "full", "--out", "r.jsonl").returncode == 0
    before = (tmp_path / "r.jsonl").read_text()
    args = (
        "bench",
        "--find-max-len",
        "--attn",
        "naive",
        "--memory-budget",
        "8MB",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--seq-lens",
        "512,2k",
        "--min-run-time",
        "0.01",
        "--out",
        "r.jsonl",
    )
    _one_line_error(adv(*args), "--resume")
    r = adv(*args, "--resume")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "r.jsonl").read_text()
    assert text.startswith(before)
    probes = [x for x in _rows(tmp_path / "r.jsonl") if x.get("probe")]
    assert probes and all(x.get("run_id") and isinstance(x.get("env"), dict) for x in probes)
    # a second --resume reuses every probe already in the file
    r = adv(*args, "--resume")
    assert r.returncode == 0 and (tmp_path / "r.jsonl").read_text() == text
    assert "(from the file)" in r.stderr


@pytest.mark.parametrize(
    "content,needle",
    [
        (gzip.compress(b'{"label": "full"}\n'), "gzip"),
        ('{"label": "full", "seq_len": 1, "status": "ok"}\n'.encode("utf-16"), "UTF-16"),
        (bytes(range(256)) * 4, "not an effattn results file"),
        (b'{"results": [1, 2, 3]}\n', "not an effattn results file"),
        (b"[1, 2]\n", "not an effattn results file"),
    ],
)
def test_files_that_are_not_results_are_one_line_errors(cli_here, tmp_path, content, needle):
    (tmp_path / "x.jsonl").write_bytes(content)
    for args in (("report", "x.jsonl", "--out", "rep"), ("compare", "x.jsonl", "x.jsonl")):
        code, _, err = cli_here(*args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_a_foreign_file_in_a_new_process(adv, tmp_path):
    (tmp_path / "x.jsonl").write_bytes(gzip.compress(b'{"label": "full"}\n'))
    _one_line_error(adv("report", "x.jsonl", "--out", "rep"), "gzip")


def test_a_garbage_line_is_reported_by_number_and_the_rest_used(adv, tmp_path):
    assert adv("bench", *SMALL, "--seq-lens", "16,32", "--attn", "full", "--out", "r.jsonl").returncode == 0
    a, b = (tmp_path / "r.jsonl").read_text().splitlines()
    (tmp_path / "g.jsonl").write_text(a + "\n\x00garbage}\n" + b + "\n")
    r = adv("report", "g.jsonl", "--out", "rep")
    assert r.returncode == 0, r.stderr
    assert "line 2" in r.stderr and "skipped 1 line" in r.stderr
    assert "n=32" in (tmp_path / "rep" / "report.md").read_text()


# ------------------------------------------------------------------------ 4. bad input
def test_bad_input_in_a_new_process_too(adv, tmp_path):
    """The same rules, met as a user meets them (one representative case per rule family)."""
    _one_line_error(adv("bench", "--seq-lens", "", "--out", "r.jsonl"), "--seq-lens is empty")
    _one_line_error(adv("bench", "--timeout", "nan", "--out", "r.jsonl"), "finite")
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(
    "field,value",
    [
        ("mode", "backward"),
        ("level", "kernel"),
        ("seq_lens", []),
        ("seq_lens", [0, 8]),
        ("seq_lens", [64, 32]),
        ("seq_lens", [32, 32]),
        ("heads", 0),
        ("batch", True),
        ("dtype", "int8"),
        ("timeout_s", float("inf")),
        ("min_run_time_s", float("nan")),
        ("memory_budget_bytes", 0),
        ("causal", "yes"),
        ("seed", -1),
    ],
)
def test_sweepspec_validates_like_the_cli(field, value):
    kwargs = dict(seq_lens=[32, 64], variants=[Variant("full", {})])
    kwargs[field] = value
    with pytest.raises(EffattnError):
        SweepSpec(**kwargs)


def test_repeated_option_key_is_refused_in_the_api():
    with pytest.raises(EffattnError, match="given twice"):
        parse_variant("sliding_window:window=3:window=5")


def _builtins():
    return [
        n
        for n in effattn.list_attention()
        if effattn.get_entry(n).source == "builtin"
        and effattn.get_entry(n).facts.kind == "attention"  # (mixers: their own suite, test_mixers.py)
        and effattn.get_entry(n).availability("cpu") is None
    ]


@pytest.mark.parametrize("name", _builtins())
def test_empty_lengths_and_non_bool_causal_behave_alike_everywhere(name):
    attn = effattn.create_attention(name)
    cross = effattn.get_entry(name).facts.supports_cross
    if effattn.get_entry(name).facts.causal_only:  # (its non-causal call is refused, empty or not)
        attn = functools.partial(attn, causal=True)
    for n_q, n_k in ((0, 0), (0, 5), (5, 0)) if cross else ((0, 0),):
        q = torch.randn(2, 3, n_q, 8, requires_grad=True)
        k, v = (torch.randn(2, 3, n_k, 8, requires_grad=True) for _ in range(2))
        out = attn(q, k, v)
        assert out.shape == (2, 3, n_q, 8) and (out.numel() == 0 or out.abs().max() == 0), (n_q, n_k)
        out.sum().backward()  # an empty call stays on the graph
    q = torch.randn(1, 2, 5, 8)
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="causal must be a bool"):
            attn(q, q, q, causal=bad)


@pytest.mark.slow
def test_sigterm_keeps_every_finished_point(plugin_site, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    # the hanging plugin hangs from n = 64 on: the lengths before it finish, then the sweep waits
    cmd = [
        sys.executable,
        "-m",
        "effattn.cli",
        "bench",
        *SMALL,
        "--seq-lens",
        "16,32,64",
        "--attn",
        "full,adv_hang:at_len=64",
        "--timeout",
        "60",
        "--out",
        "r.jsonl",
    ]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline:
        if (tmp_path / "r.jsonl").exists() and len((tmp_path / "r.jsonl").read_text().splitlines()) >= 4:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert b"terminated: every finished point" in err and b"--resume" in err
    rows = _rows(tmp_path / "r.jsonl")
    assert sorted((x["label"], x["seq_len"], x["status"]) for x in rows) == [
        ("adv_hang:at_len=64", 16, "ok"),
        ("adv_hang:at_len=64", 32, "ok"),
        ("full", 16, "ok"),
        ("full", 32, "ok"),
    ]
    time.sleep(0.5)
    left = subprocess.run(
        ["pgrep", "-f", f"effattn.bench.worker [0-9]+ [0-9]+ {p.pid}$"], capture_output=True, text=True
    )
    assert left.stdout.strip() == "", "a measuring process outlived its sweep"


def test_the_report_flags_rates_above_the_peak_in_old_files_too(tmp_path):
    """A row written before rows carried `fault` (the committed reference: masked at 16k, 195%)."""
    from effattn.report import build_report

    rows = [
        {
            "label": "masked",
            "variant": "masked",
            "options": {},
            "seq_len": 16384,
            "status": "ok",
            "time_ms": 10.0,
            "peak_mem_bytes": 1,
            "gflops": 210.8,
            "peak_fraction": 1.95,
            "device": "cpu",
            "dtype": "float32",
            "batch": 1,
            "heads": 8,
            "head_dim": 64,
            "causal": False,
            "mode": "fwd",
            "level": "attention",
        },
        {
            "label": "full",
            "variant": "full",
            "options": {},
            "seq_len": 16384,
            "status": "ok",
            "time_ms": 20.0,
            "peak_mem_bytes": 1,
            "gflops": 80.0,
            "peak_fraction": 0.74,
            "device": "cpu",
            "dtype": "float32",
            "batch": 1,
            "heads": 8,
            "head_dim": 64,
            "causal": False,
            "mode": "fwd",
            "level": "attention",
        },
    ]
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report([str(tmp_path / "old.jsonl")], str(tmp_path / "rep"))
    md = (tmp_path / "rep" / "report.md").read_text()
    faults = md.split("Measurement faults", 1)[1]
    assert "masked n=16384" in faults and "195%" in faults and "full n=16384" not in faults


# ------------------------------------------------------------------------ found by an adversarial review
def test_a_plugin_constructor_that_hangs_or_exits_is_bad_input_not_a_hang(adv, tmp_path):
    """Third-party plugins are built in a measuring process, never in effattn's own."""
    r = adv(
        "bench",
        *SMALL,
        "--seq-lens",
        "16",
        "--attn",
        "full,adv_init:what=hang",
        "--timeout",
        "3",
        "--out",
        "r.jsonl",
        timeout=120,
    )
    _one_line_error(r, "adv_init: building it took longer than 3 s")
    r = adv("bench", *SMALL, "--seq-lens", "16", "--attn", "adv_init:what=exit", "--out", "r.jsonl", timeout=120)
    _one_line_error(r, "adv_init:what=exit: building it ended")
    assert not (tmp_path / "r.jsonl").exists()


def test_a_constructor_that_kills_the_check_is_pinned_on_its_variant_and_the_rest_are_still_checked(
    plugin_site, monkeypatch
):
    """Two variants of one plugin, the first fine, the second ending the process, a third never
    reached by that process: blame by position, and the third is checked in a fresh process."""
    from effattn.bench.worker import MeasuringProcess

    monkeypatch.setenv("PYTHONPATH", str(plugin_site))
    mp = MeasuringProcess()
    try:
        why = mp.check(
            [
                {"name": "adv_init", "options": {"what": "none"}, "label": "adv_init:what=none"},
                {"name": "adv_init", "options": {"what": "exit"}, "label": "adv_init:what=exit"},
                {"name": "adv_init", "options": {"what": "hang"}, "label": "adv_init"},
            ],
            5.0,
        )
    finally:
        mp.kill()
    assert why[0] is None
    assert why[1].startswith("adv_init:what=exit: building it ended")
    assert why[2] == "adv_init: building it took longer than 5 s"  # checked, not assumed fine


def test_a_plugin_that_exits_at_import_is_listed_broken(adv):
    r = adv("list")
    assert r.returncode == 0 and "adv_exits_at_import" in r.stdout.split("broken plugins:")[1], r.stdout
    assert "SystemExit" in r.stdout


@pytest.mark.parametrize("content", [b"a,b\n1,2", gzip.compress(b'{"label": "full"}\n'), b"just some notes"])
@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_resume_and_overwrite_never_touch_a_file_that_is_not_results(cli_here, tmp_path, content, flag):
    (tmp_path / "x.csv").write_bytes(content)
    code, _, err = cli_here("bench", *SMALL, "--seq-lens", "16", "--attn", "full", "--out", "x.csv", flag)
    assert code == 2 and "refusing to" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "x.csv").read_bytes() == content and not (tmp_path / "x.csv.torn").exists()


@pytest.mark.parametrize("target", ["/dev/null", "fifo"])
def test_an_out_that_is_no_regular_file_is_refused_before_measuring(cli_here, tmp_path, target):
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
    code, _, err = cli_here("bench", *SMALL, "--seq-lens", "16", "--attn", "full", "--out", target)
    assert code == 2 and "not a regular file" in err, err


@pytest.mark.slow
def test_resume_measures_shorter_lengths_and_remeasures_under_new_limits(adv, tmp_path):
    base = ("bench", *SMALL, "--attn", "full", "--out", "r.jsonl")
    assert adv(*base, "--seq-lens", "1k", "--memory-budget", "100KB").returncode == 0
    r = adv(*base, "--seq-lens", "64,1k,2k", "--memory-budget", "100KB", "--resume")
    by = {x["seq_len"]: x for x in _rows(tmp_path / "r.jsonl")}
    assert by[64]["status"] == "ok" and by[2048]["status"] == "skipped", r.stderr  # only longer lengths skip
    r = adv(*base, "--seq-lens", "64,1k,2k", "--resume")  # no budget now: the oom says nothing about that
    assert "measuring them again" in r.stderr
    latest = {}
    for x in _rows(tmp_path / "r.jsonl"):
        latest[x["seq_len"]] = x["status"]
    assert latest == {64: "ok", 1024: "ok", 2048: "ok"}


def test_report_of_a_file_without_an_ok_point(adv, tmp_path):
    # (every point an error: the sweep itself exits 1, and its rows are in the file all the same)
    assert adv("bench", *SMALL, "--seq-lens", "16,32", "--attn", "adv_nan", "--out", "e.jsonl").returncode == 1
    r = adv("report", "e.jsonl", "--out", "rep")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "Points that did not run" in (tmp_path / "rep" / "report.md").read_text()


def test_absurd_numbers_are_refused(cli_here, tmp_path):
    for args, needle in (
        (["--seq-lens", "99999999999999999999999"], "longer than 2^40"),
        (["--seed", "99999999999999999999999"], "--seed"),
        (["--min-run-time", "1e308"], "more than 3600"),
    ):
        code, _, err = cli_here("bench", "--attn", "full", "--out", "r.jsonl", *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.jsonl").exists()
    code, _, err = cli_here("report", "x.jsonl", "--out", "")
    assert code == 2


def test_rows_a_reader_cannot_rely_on_are_skipped_by_line(tmp_path):
    from effattn.store import read_results

    good = {"label": "full", "seq_len": 64, "status": "ok", "time_ms": 1.0}
    bad = [
        {**good, "time_ms": 0},
        {**good, "time_ms": float("nan")},
        {**good, "label": 5},
        {**good, "status": ["ok"]},
        {**good, "seq_len": 2**70},
        {**good, "time_ms": None},
    ]
    text = "\ufeff" + json.dumps(good) + "\n" + "".join(json.dumps(b) + "\n" for b in bad)
    (tmp_path / "r.jsonl").write_text(text, encoding="utf-8")
    rows, problems = read_results(str(tmp_path / "r.jsonl"))
    assert rows == [good] and [p.line for p in problems] == [2, 3, 4, 5, 6, 7]  # the BOM does not cost row 1
    (tmp_path / "u.jsonl").write_bytes(json.dumps(good).encode("utf-32"))
    with pytest.raises(ResultsFileError, match="UTF-32"):
        read_results(str(tmp_path / "u.jsonl"))


def test_a_point_that_turns_bad_after_a_few_calls_or_in_a_later_layer_is_an_error(adv, tmp_path):
    r = adv(
        "bench",
        *SMALL,
        "--seq-lens",
        "32",
        "--attn",
        "adv_nan_later,adv_mutates,adv_threads,full",
        "--no-error",
        "--out",
        "r.jsonl",
    )
    assert r.returncode == 0, r.stderr
    by = {x["label"]: x for x in _rows(tmp_path / "r.jsonl")}
    assert by["adv_nan_later"]["status"] == "error" and "not finite" in by["adv_nan_later"]["reason"]
    assert by["adv_mutates"]["status"] == "error" and "modified its inputs" in by["adv_mutates"]["reason"]
    assert by["adv_threads"]["status"] == "error" and "thread count" in by["adv_threads"]["reason"]
    assert by["full"]["status"] == "ok" and by["full"]["env"]["threads"] == by["adv_mutates"]["env"]["threads"]
    r = adv("bench", *SMALL, "--seq-lens", "32", "--attn", "adv_nan_second", "--level", "model", "--out", "m.jsonl")
    row = _rows(tmp_path / "m.jsonl")[0]
    assert row["status"] == "error" and "not finite" in row["reason"], row


def test_memory_counts_a_cache_made_on_a_later_call(with_plugins):
    spec = SweepSpec(seq_lens=[64], variants=[], heads=2, head_dim=8, min_run_time_s=0.01, error=False)
    for on_call in (2, 3):
        row = measure_point(spec, Variant("adv_cache", {"on_call": on_call}), 64)
        assert row["retained_bytes"] >= 64 * 2**20 and row["peak_mem_bytes"] >= 64 * 2**20, (on_call, row)


def test_a_short_timeout_is_not_spent_between_calls(adv, tmp_path):
    r = adv("bench", *SMALL, "--seq-lens", "32,64", "--attn", "full,linear", "--timeout", "0.5", "--out", "r.jsonl")
    assert r.returncode == 0, r.stderr
    assert [x["status"] for x in _rows(tmp_path / "r.jsonl")] == ["ok"] * 4, r.stderr


def test_a_crash_is_found_although_a_forked_child_holds_the_pipe(adv, tmp_path):
    t0 = time.time()
    r = adv(
        "bench",
        *SMALL,
        "--seq-lens",
        "32",
        "--attn",
        "adv_fork_crash,adv_spawns,full",
        "--timeout",
        "60",
        "--out",
        "r.jsonl",
    )
    assert r.returncode == 0, r.stderr
    by = {x["label"]: x for x in _rows(tmp_path / "r.jsonl")}
    assert by["adv_fork_crash"]["status"] == "error" and "SIGSEGV" in by["adv_fork_crash"]["reason"]
    assert by["full"]["status"] == "ok" and time.time() - t0 < 50
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", "effattn-adv-spawned"], capture_output=True, text=True).stdout.strip()
    assert left == "", "a process a plugin started outlived the sweep"


def test_exits_huge_messages_and_bad_counts_are_errors(adv, tmp_path):
    t0 = time.time()
    r = adv(
        "bench",
        *SMALL,
        "--seq-lens",
        "32",
        "--attn",
        "adv_exits_in_forward,adv_huge_message,adv_bad_nnz,full",
        "--out",
        "r.jsonl",
    )
    assert r.returncode == 0 and len(r.stderr) < 100_000, r.stderr[-500:]
    by = {x["label"]: x for x in _rows(tmp_path / "r.jsonl")}
    assert by["adv_exits_in_forward"]["status"] == "error" and "SystemExit" in by["adv_exits_in_forward"]["reason"]
    assert by["adv_huge_message"]["status"] == "error" and len(by["adv_huge_message"]["reason"]) < 3000
    assert by["adv_bad_nnz"]["status"] == "error" and "attended pairs" in by["adv_bad_nnz"]["reason"]
    assert by["full"]["status"] == "ok" and time.time() - t0 < 60
    assert (tmp_path / "r.jsonl").stat().st_size < 1_000_000


def test_find_max_len_tells_an_error_from_the_memory_limit(adv, tmp_path):
    r = adv(
        "bench",
        "--find-max-len",
        "--attn",
        "adv_raises:at_len=300",
        "--memory-budget",
        "1GB",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--seq-lens",
        "64,1k",
        "--out",
        "m.jsonl",
    )
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stdout.splitlines() if "adv_raises" in x][0]
    assert ">= 256" in line and "the search stopped: error at n=512" in line, r.stdout


def test_no_worker_log_is_left_behind(adv, tmp_path, monkeypatch):
    private = tmp_path / "tmp"
    private.mkdir()
    env_tmp = {"TMPDIR": str(private)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "effattn.cli",
            "bench",
            *SMALL,
            "--seq-lens",
            "16",
            "--attn",
            "full,adv_crash",
            "--out",
            "r.jsonl",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", ""), **env_tmp),
        timeout=200,
    )
    assert r.returncode in (0, 2), r.stderr
    assert list(private.iterdir()) == []


def test_the_python_api_refuses_what_the_cli_refuses(tmp_path):
    with pytest.raises(EffattnError, match="must be a list"):
        SweepSpec(seq_lens="64", variants=[])
    with pytest.raises(EffattnError, match="no option 'windw'"):
        SweepSpec(seq_lens=[64], variants=[Variant("sliding_window", {"windw": 3})])
    spec = SweepSpec(seq_lens=[64], variants=[Variant("full", {})])
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.heads = 0  # frozen: dataclasses.replace makes a validated copy
    with pytest.raises(EffattnError):
        measure_point(spec, Variant("full", {}), 0)
    with pytest.raises(ValueError, match="a path"):
        from effattn.bench import run_sweep

        run_sweep(spec, None, progress=False)
    assert not os.path.exists("None")
