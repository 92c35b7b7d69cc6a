"""Integrity, round two: each class of wrong or lost result an adversarial user found, met as the
user met it - through the CLI, in a fresh process.

(The exact plugins that compute the wrong thing are in tests/test_exactness.py.)
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

TINY = ["--min-run-time", "0.01", "--heads", "2", "--head-dim", "16"]


def _rows(path):
    return [json.loads(x) for x in open(path).read().splitlines() if x.strip()]


@pytest.fixture
def cli(plugin_site, run_cli, tmp_path):
    """`effattn ...` in a subprocess that sees the demo plugins, in tmp_path."""

    def run(*args, env=None, timeout=600, cwd=None):
        extra = {"PYTHONPATH": str(plugin_site), **(env or {})}
        return run_cli(*args, env_extra=extra, cwd=str(cwd or tmp_path), timeout=timeout)

    return run


def _one_line_error(r, needle, code=2):
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert lines and needle in lines[-1] and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------- 2. a slow error reference never blames the variant
@pytest.mark.slow
def test_a_full_reference_past_the_timeout_leaves_the_error_columns_empty(cli, tmp_path):
    """linear at 32k takes a fraction of a second a call; exact attention at 32k takes far longer
    than the 3 s timeout on this kind of machine: the point is ok, its error columns say why not."""
    r = cli("bench", "--attn", "linear", "--seq-lens", "32k", "--timeout", "3", "--min-run-time", "0.05",
            "--out", "l.jsonl")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(tmp_path / "l.jsonl")
    assert row["status"] == "ok", row["reason"]
    assert row["rel_err_vs_full"] is None
    assert row["error_note"].startswith("not computed: the `full` reference for the error columns would take about")


# ------------------------------------------------------------ 3. a machine busy from start to end
def _load(threads=2, seconds=120):
    code = textwrap.dedent(
        f"""
        import torch, time
        torch.set_num_threads({threads})
        a = torch.randn(1024, 1024)
        end = time.time() + {seconds}
        while time.time() < end:
            a @ a
        """
    )
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.slow
def test_a_machine_busy_from_start_to_end_is_flagged_and_warned(cli, tmp_path):
    load = _load()
    try:
        time.sleep(2)
        r = cli("bench", "--attn", "full,linear", "--seq-lens", "256,512", *TINY, "--out", "b.jsonl")
    finally:
        load.kill()
        load.wait()
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(tmp_path / "b.jsonl")
    assert all(x["loaded"] is True for x in rows), [(x["label"], x["seq_len"], x["load_reasons"]) for x in rows]
    assert all(any("other processes used" in w for w in x["load_reasons"]) for x in rows)
    assert all(x["others_cpu_cores"] > 0.5 for x in rows)  # (a fair share: about one core of two)
    assert "WARNING: 4 of 4 points were measured while the machine was busy" in r.stdout


@pytest.mark.slow
def test_require_quiet_waits_then_fails_in_one_line_and_keeps_nothing_loaded(cli, tmp_path):
    load = _load()
    try:
        time.sleep(2)
        r = cli("bench", "--attn", "full", "--seq-lens", "256", *TINY, "--require-quiet", "--quiet-wait", "4",
                "--out", "q.jsonl")  # fmt: skip
    finally:
        load.kill()
        load.wait()
    _one_line_error(r, "--require-quiet: the machine was not quiet within 4 s (other processes used", code=3)
    assert "rerun with --resume" in r.stderr
    assert _rows(tmp_path / "q.jsonl") == []
    # once quiet, the same command measures, and its rows are quiet
    r = cli("bench", "--attn", "full", "--seq-lens", "256", *TINY, "--require-quiet", "--out", "q.jsonl", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(tmp_path / "q.jsonl")
    assert row["status"] == "ok" and row["loaded"] is False and row["load_reasons"] is None


def test_a_machine_slower_than_it_usually_is_is_flagged(cli, tmp_path):
    """The machine's usual reference rate, as a cache that saw it 10x faster keeps it."""
    from effattn.bench.load import History, machine_key
    from effattn.env import environment

    cache = tmp_path / "cache"
    r = cli(
        "bench", "--attn", "full", "--seq-lens", "64", *TINY, "--out", "a.jsonl", env={"EFFATTN_CACHE_DIR": str(cache)}
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(tmp_path / "a.jsonl")
    key = machine_key(environment(), "cpu", "float32", 1024)
    hist = History(str(cache / "machine-rates.json"))
    if row["loaded"]:
        pytest.skip(f"the machine was busy already: {row['load_reasons']}")
    for _ in range(3):
        hist.record(key, 10 * row["matmul_peak_gflops"])
    r = cli(
        "bench", "--attn", "full", "--seq-lens", "64", *TINY, "--out", "b.jsonl", env={"EFFATTN_CACHE_DIR": str(cache)}
    )
    (row,) = _rows(tmp_path / "b.jsonl")
    assert row["loaded"] is True and row["machine_usual_gflops"] > 0
    assert any("of this machine's usual" in w for w in row["load_reasons"]), row["load_reasons"]


def test_resume_under_another_thread_count_is_refused(cli, tmp_path):
    r = cli("bench", "--attn", "full", "--seq-lens", "64", *TINY, "--out", "t.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    threads = _rows(tmp_path / "t.jsonl")[0]["env"]["threads"]
    other = "1" if threads != 1 else "2"
    r = cli("bench", "--attn", "full", "--seq-lens", "64,128", *TINY, "--out", "t.jsonl", "--resume",
            env={"OMP_NUM_THREADS": other})  # fmt: skip
    _one_line_error(r, f"with {threads} thread(s); this run would measure")
    assert len(_rows(tmp_path / "t.jsonl")) == 1


def test_compare_warns_and_calls_nothing_a_regression_across_thread_counts(cli, tmp_path):
    r = cli("bench", "--attn", "full", "--seq-lens", "64", *TINY, "--out", "a.jsonl")
    assert r.returncode == 0
    rows = _rows(tmp_path / "a.jsonl")
    slow = [dict(x, env=dict(x["env"], threads=x["env"]["threads"] + 7),
                 time_raw_ms=[t * 3 for t in x["time_raw_ms"]], time_ms=x["time_ms"] * 3) for x in rows]  # fmt: skip
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(x) + "\n" for x in slow))
    r = cli("compare", "a.jsonl", "b.jsonl")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "their times are not comparable" in r.stderr
    assert "inconclusive (measured on different machines or thread counts)" in r.stdout


# --------------------------------------------------------- 4. memory outside torch's allocator
def test_memory_outside_torch_counts_and_the_budget_applies_to_it(cli, tmp_path):
    r = cli("bench", "--attn", "adv_numpy_memory", "--seq-lens", "64", *TINY, "--out", "m.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(tmp_path / "m.jsonl")
    assert row["status"] == "ok" and row["peak_mem_bytes"] < 16 * 2**20
    assert row["rss_peak_bytes"] >= 0.95 * 256 * 2**20  # (the process's own pages freed meanwhile: a little less)
    r = cli("bench", "--attn", "adv_numpy_memory", "--seq-lens", "64", *TINY, "--memory-budget", "200MB",
            "--out", "b.jsonl")  # fmt: skip
    (row,) = _rows(tmp_path / "b.jsonl")
    assert row["status"] == "oom" and "resident peak (memory outside torch's allocator)" in row["reason"]


# ---------------------------------------------------------------- 5, 6. reports that crashed
def test_a_task_file_gets_a_report_of_its_own_and_compare_refuses_it(cli, tmp_path):
    here = os.path.join(os.path.dirname(__file__), "..", "results", "recall-tasks", "mqar-default.jsonl")
    r = cli("report", here, "--out", "rep", "--format", "md,html")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| full | 64 | 1 | 1.000 | 1.000 (seed 0) |" in md and "train time (s)" in md
    assert (tmp_path / "rep" / "accuracy.png").stat().st_size > 1000
    r = cli("compare", here, here)
    _one_line_error(r, "holds training runs (--task), not timing points")


def test_report_of_a_file_whose_only_ok_row_is_full(cli, tmp_path):
    r = cli("bench", "--attn", "full,adv_nan", "--seq-lens", "64,128", *TINY, "--out", "e.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(tmp_path / "e.jsonl")
    # the error rows keep the columns they had when they failed, as a row that failed late does
    for x in rows:
        if x["label"] == "adv_nan":
            x["rel_err_vs_full"] = 0.5
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = cli("report", "e.jsonl", "--out", "rep")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]


# ------------------------------------------------------------------------- 7. an unwritable folder
def test_no_out_in_a_folder_where_results_cannot_be_made(cli, tmp_path):
    (tmp_path / "results").write_text("a file where the folder would go")
    r = cli("bench", "--attn", "full", "--seq-lens", "64", *TINY)
    _one_line_error(r, "cannot create the results folder")


def test_no_out_in_a_read_only_folder(cli, tmp_path):
    ro, src = tmp_path / "ro", tmp_path / "src"
    ro.mkdir()
    src.mkdir()
    ok = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode == 0
    ok = ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode == 0
    if not ok:
        if os.geteuid() != 0:
            os.chmod(ro, 0o555)  # a user who is not root cannot write a read-only folder
        else:
            subprocess.run(["umount", str(ro)], capture_output=True)
            pytest.skip("root without a read-only mount: nothing here is read-only to it")
    try:
        r = cli("bench", "--attn", "full", "--seq-lens", "64", *TINY, cwd=ro)
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
    _one_line_error(r, "give --out a writable path")


# ---------------------------------------------------------------------- 8. repeated options
def test_repeated_lists_are_joined_and_repeated_values_refused(cli, tmp_path):
    r = cli("bench", "--attn", "full", "--attn=linear", "--seq-lens", "64", "--seq-lens=128", *TINY, "--out", "r.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    got = sorted((x["label"], x["seq_len"]) for x in _rows(tmp_path / "r.jsonl"))
    assert got == [("full", 64), ("full", 128), ("linear", 64), ("linear", 128)]
    r = cli("bench", "--attn", "full", "--seq-lens", "64", "--dtype", "float32", "--dtype=float64", "--out", "x.jsonl")
    _one_line_error(r, "--dtype is given 2 times ('float32', 'float64'): give it once")
    assert not (tmp_path / "x.jsonl").exists()
    r = cli("report", "r.jsonl", "--out", "a", "--out", "b")
    _one_line_error(r, "--out is given 2 times")


# ------------------------------------------------------------------------------- 9. the smaller ones
def test_a_sweep_where_no_point_ends_ok_exits_non_zero(cli, tmp_path):
    r = cli("bench", "--attn", "adv_nan", "--seq-lens", "64,128", *TINY, "--out", "n.jsonl")
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "effattn: error: no point of this run ended ok (2 error); their reasons are above"
    )
    assert len(_rows(tmp_path / "n.jsonl")) == 2


def test_a_full_disk_says_how_to_complete_the_sweep(cli, tmp_path):
    """A file size limit stands for a full disk: the write fails the same way (EFBIG, ENOSPC)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    r = subprocess.run([sys.executable, "-m", "effattn.cli", "bench", "--attn", "full", "--seq-lens", "64,128,256",
                        *TINY, "--out", "d.jsonl"], cwd=str(tmp_path), capture_output=True, text=True,
                       preexec_fn=limit, timeout=600)  # fmt: skip
    _one_line_error(r, "rerun with --resume")
    assert "cannot write results to d.jsonl" in r.stderr
    from effattn.store import read_results

    rows, torn = read_results(str(tmp_path / "d.jsonl"))
    assert not os.path.exists(os.path.join(os.path.dirname(__file__), "..", ".git", "index.lock"))
    assert 1 <= len(rows) < 3  # what was written before the disk filled is whole; at most a torn tail
    # and the hint holds: with space again, --resume completes the sweep
    r = subprocess.run([sys.executable, "-m", "effattn.cli", "bench", "--attn", "full", "--seq-lens", "64,128,256",
                        *TINY, "--out", "d.jsonl", "--resume"], cwd=str(tmp_path), capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows, _ = read_results(str(tmp_path / "d.jsonl"))
    assert sorted(x["seq_len"] for x in rows) == [64, 128, 256]


def test_crossovers_and_fits_leave_out_fault_points(tmp_path):
    from effattn.results import load, summary

    rows = []
    for label, factor in (("full", 1.0), ("linear", 2.0)):  # linear: twice full's time everywhere
        for n in (1024, 2048, 4096, 8192):
            rows.append({"label": label, "variant": label, "seq_len": n, "status": "ok",
                         "time_ms": factor * 1e-5 * n**2, "peak_mem_bytes": n * 100})  # fmt: skip
    # a fault: an impossible time at 8192 (a rate above the peak) would make linear faster there
    rows[-1].update(time_ms=1e-9, fault="useful FLOP rate 9e9 GFLOP/s is 1e9% of the matmul peak")
    p = tmp_path / "f.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = summary(load(str(p))).set_index("label")
    assert s.loc["linear", "crossover"] == "-" and s.loc["linear", "faster_than_full_from"] != 8192
    assert s.loc["linear", "time_exponent"] == pytest.approx(2.0, abs=1e-9)  # fitted on 1024..4096 only
    assert "1 a measurement fault, not fitted" in s.loc["linear", "points"]


def test_a_half_precision_matmul_that_is_a_degenerate_path_is_not_the_peak(cli, tmp_path):
    """A CPU without fast float16 runs torch.mm in float16 at a fraction of a GFLOP/s while SDPA
    converts to float32: made so here by a torch.mm that is slow in float16 only."""
    site = tmp_path / "slowmm"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import time
            import torch

            _mm = torch.mm

            def slow_mm(a, b, *args, **kw):
                if a.dtype == torch.float16:
                    time.sleep(0.2)
                return _mm(a, b, *args, **kw)

            torch.mm = slow_mm
            """
        )
    )
    r = cli("bench", "--attn", "full", "--seq-lens", "256,512", "--dtype", "float16", *TINY, "--out", "h.jsonl",
            env={"PYTHONPATH": str(site)})  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    for row in _rows(tmp_path / "h.jsonl"):
        assert row["status"] == "ok" and not row.get("fault"), row.get("fault")
        assert row["peak_note"].startswith("float16 matmuls run at") and "the peak is float32's" in row["peak_note"]
        assert row["matmul_peak_gflops"] > 1


def test_the_decode_tables_mark_what_decodes_by_recomputing(cli, tmp_path):
    r = cli("bench", "--mode", "decode", "--attn", "full,adv_cache", "--seq-lens", "64", *TINY, "--out", "d.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    backends = {x["label"]: x["decode_backend"] for x in _rows(tmp_path / "d.jsonl")}
    assert backends == {"full": "native", "adv_cache": "recompute"}
    assert "adv_cache (recomputes)" in r.stdout and "full (recomputes)" not in r.stdout
    r = cli("report", "d.jsonl", "--out", "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| adv_cache (recomputes) |" in md and "| full |" in md


def test_compare_says_no_change_where_nothing_changed(cli, tmp_path):
    r = cli("bench", "--attn", "full", "--seq-lens", "64", *TINY, "--out", "a.jsonl")
    assert r.returncode == 0
    r = cli("compare", "a.jsonl", "a.jsonl")
    assert r.returncode == 0 and "no change (within the noise)" in r.stdout, r.stdout


def test_pareto_labels_do_not_overlap(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from effattn.report.plots import _overlap, place_labels

    fig, ax = plt.subplots(figsize=(6, 4.5))
    # a tight cluster beside one far point (which sets the axes' range): as variants of nearly
    # the same time and error sit beside a slow exact one
    pts = [(f"variant_{i}", 10 + 0.01 * i, 0.1 + 0.0001 * i) for i in range(8)] + [("far", 5000.0, 1e-7)]
    ax.scatter([p[1] for p in pts], [p[2] for p in pts])
    ax.set_xscale("log")
    ax.set_yscale("log")
    boxes = place_labels(ax, pts)
    plt.close(fig)
    assert all(_overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])
