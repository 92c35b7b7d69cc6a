"""`effattn bench`: results are data, bad input is one line and exit 2, resume completes exactly."""

import io
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import effattn
from effattn.bench import SweepSpec, measure_point, run_sweep
from effattn.bench.measure import peak_memory_bytes
from effattn.results import fit_exponent, load, summary
from effattn.spec import Variant, parse_seq_lens, parse_size

FAST = ["--min-run-time", "0.01", "--heads", "2", "--head-dim", "16"]


def fast_unless(args) -> list[str]:
    """FAST without the options `args` gives itself (an option may be given only once)."""
    out = []
    for flag, value in zip(FAST[::2], FAST[1::2]):
        if flag not in args:
            out += [flag, value]
    return out


def test_parse_seq_lens_and_sizes():
    assert parse_seq_lens("256,1k,2K,512") == [256, 512, 1024, 2048]
    assert parse_size("4GB") == 4 * 2**30 and parse_size("512MiB") == 512 * 2**20 and parse_size("100") == 100
    for bad in ("0", "-5", "abc", "1.5k", ""):
        with pytest.raises(effattn.EffattnError):
            parse_seq_lens(bad)


def test_fit_exponent_recovers_slope():
    n = [256, 512, 1024, 2048]
    e, se = fit_exponent(n, [3 * x**2 for x in n])
    assert abs(e - 2) < 1e-9 and se < 1e-6
    assert fit_exponent([256], [1.0])[0] != fit_exponent([256], [1.0])[0]  # NaN with one point


def test_naive_peak_memory_is_at_least_the_score_matrix():
    """CPU memory is measured, not guessed: naive at n = 2048, 8 heads holds 8 * 2048^2 floats."""
    n = 2048
    q, k, v = (torch.randn(1, 8, n, 64) for _ in range(3))
    naive = effattn.create_attention("naive")
    with torch.no_grad():
        peak = peak_memory_bytes(lambda: naive(q, k, v), "cpu")
    assert peak >= 8 * n * n * 4, peak


def test_linear_memory_grows_linearly():
    lin = effattn.create_attention("linear")
    peaks = []
    for n in (1024, 2048, 4096, 8192):
        q, k, v = (torch.randn(1, 8, n, 64) for _ in range(3))
        with torch.no_grad():
            peaks.append(peak_memory_bytes(lambda q=q, k=k, v=v: lin(q, k, v), "cpu"))
    e, _ = fit_exponent([1024, 2048, 4096, 8192], peaks)
    assert 0.85 < e < 1.15, (peaks, e)


def test_point_row_is_complete_data():
    spec = SweepSpec(seq_lens=[64], variants=[], heads=2, head_dim=16, min_run_time_s=0.01)
    row = measure_point(spec, Variant("sliding_window", {"window": 8}), 64)
    assert row["status"] == "ok", row
    for col in (
        "time_ms",
        "time_iqr_ms",
        "time_raw_ms",
        "first_call_ms",
        "peak_mem_bytes",
        "gflops",
        "attended_pairs",
        "rel_err_vs_full",
        "cosine_vs_full",
        "rel_err_vs_own_dense",
        "backend",
    ):
        assert row[col] is not None, col
    assert row["rel_err_vs_own_dense"] < 1e-5  # the in-sweep bug detector
    assert row["rel_err_vs_full"] > 1e-3  # a window of 8 at n = 64 is not full attention


def test_unsupported_and_skipped_points(tmp_path):
    out = tmp_path / "r.jsonl"
    spec = SweepSpec(
        seq_lens=[32, 64],
        variants=[Variant("linformer", {"proj_len": 8, "max_len": 40}), Variant("full", {})],
        heads=2,
        head_dim=8,
        causal=False,
        min_run_time_s=0.01,
        memory_budget_bytes=1,
    )
    rows = run_sweep(spec, str(out), progress=False)
    by = {(r["label"], r["seq_len"]): r for r in rows}
    # over the budget at 32: recorded as oom, and 64 is skipped without being attempted
    assert by[("full", 32)]["status"] == "oom" and by[("full", 64)]["status"] == "skipped"
    spec2 = SweepSpec(
        seq_lens=[32], variants=[Variant("nystrom", {})], causal=True, heads=2, head_dim=8, min_run_time_s=0.01
    )
    r = run_sweep(spec2, str(tmp_path / "c.jsonl"), progress=False)[0]
    assert r["status"] == "unsupported" and "causal" in r["reason"]

    # a dtype the plugin does not declare is refused with its list, not run (xformers declares no
    # float64; on CPU its availability speaks first, so a CPU-only plugin with a short list is used)
    from effattn.attention.full import FullAttention
    from effattn.registry import _REGISTRY, register_attention

    class OnlyFloat32(FullAttention):
        dtypes = ("float32",)

    register_attention("_only_float32")(OnlyFloat32)
    try:
        spec3 = SweepSpec(seq_lens=[32], variants=[Variant("_only_float32", {})], dtype="bfloat16", heads=2,
                          head_dim=8, min_run_time_s=0.01)  # fmt: skip
        r = run_sweep(spec3, str(tmp_path / "d.jsonl"), progress=False, isolation="none")[0]  # registered here only
        assert r["status"] == "unsupported" and r["reason"] == "_only_float32 declares dtypes float32, not bfloat16"
    finally:
        _REGISTRY.pop("_only_float32", None)


def _bench(run_cli, tmp_path, *args):
    return run_cli("bench", *fast_unless(args), *args, cwd=str(tmp_path))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--attn", "fulll"], "did you mean full"),
        (["--attn", "sliding_window:windw=3"], "valid options: window, global_tokens"),
        (["--attn", "sliding_window:window=-3"], "window must be >= 0"),
        (["--seq-lens", "0"], "must be > 0"),
        (["--seq-lens", "12x"], "not a positive integer"),
        (["--heads", "0"], "--heads"),
        (["--batch", "-1"], "--batch"),
        (["--dtype", "int8"], "--dtype"),
        (["--out", "/nonexistent-dir/x.jsonl"], "does not exist"),
        (["--out", "."], "cannot be written"),
        (["--memory-budget", "lots"], "not a number of bytes"),
        (["--seq-lens", ""], "--seq-lens is empty"),
        (["--attn", ""], "--attn is empty"),
        (["--task", ""], "--task is empty"),
        (["--memory-budget", ""], "--memory-budget is empty"),
        (["--attn", "full,,linear"], "empty entry"),
        (["--timeout", "inf"], "finite"),
        (["--timeout", "nan"], "finite"),
        (["--min-run-time", "nan"], "finite"),
        (["--attn", "sliding_window:window=3:window=5"], "given twice"),
        (["--steps", "5"], "--steps cannot be used here"),
        (["--task", "mqar", "--causal"], "--causal cannot be used here"),
        (["--find-max-len", "--isolate"], "--isolate cannot be used here"),
        (["--resume", "--overwrite"], "exclude each other"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(cli_here, tmp_path, args, needle):
    base = (
        ["bench"]
        + ([] if "--task" in args else fast_unless(args))
        + ([] if "--seq-lens" in args else ["--seq-lens", "64"])
        + ([] if "--out" in args else ["--out", "r.jsonl"])
    )
    code, _, err = cli_here(*base, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "r.jsonl").exists()


def test_cuda_without_cuda_is_refused(run_cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    r = _bench(run_cli, tmp_path, "--device", "cuda", "--out", "r.jsonl")
    assert r.returncode == 2 and "CUDA is not available" in r.stderr


def test_existing_results_are_never_overwritten_silently(run_cli, tmp_path):
    (tmp_path / "r.jsonl").write_text('{"label": "full"}\n')
    r = _bench(run_cli, tmp_path, "--seq-lens", "64", "--attn", "full", "--out", "r.jsonl")
    assert r.returncode == 2 and "--resume" in r.stderr
    assert (tmp_path / "r.jsonl").read_text() == '{"label": "full"}\n'


@pytest.mark.slow
def test_interrupted_sweep_resumes_with_every_point_once(tmp_path):
    out = tmp_path / "r.jsonl"
    lens = "64,128,256,512,1024,2048"
    base = [sys.executable, "-m", "effattn.cli", "bench", *fast_unless(["--min-run-time"])]
    cmd = base + ["--min-run-time", "0.3", "--seq-lens", lens, "--attn", "full,linear", "--out", str(out)]
    # A child of a background job inherits SIGINT as ignored; give it the default, as a terminal would.
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a few points, then interrupt as Ctrl-C would
        if out.exists() and len(out.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert b"--resume" in err
    before = [json.loads(line) for line in out.read_text().splitlines()]
    assert 3 <= len(before) < 12
    r = subprocess.run(
        base + ["--min-run-time", "0.01", "--seq-lens", lens, "--attn", "full,linear", "--out", str(out), "--resume"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    df = load(str(out))
    keys = list(zip(df["label"], df["seq_len"]))
    assert len(keys) == 12 and len(set(keys)) == 12  # every point exactly once
    assert set(df["status"]) == {"ok"}
    # the rows measured before the interruption are kept as they were
    assert [json.loads(x) for x in out.read_text().splitlines()][: len(before)] == before


@pytest.mark.slow
def test_summary_fits_quadratic_and_linear(tmp_path):
    """The summary's log-log fits: memory measured for real (deterministic: naive holds n x n
    scores, linear O(n)), time from the same rows with times set to c·n² and c·n, so that the fit
    is checked exactly and no timing on a shared machine can fail it (speed belongs in benchmarks)."""
    out = tmp_path / "r.jsonl"
    spec = SweepSpec(
        seq_lens=[1024, 2048, 4096],
        variants=[Variant("naive", {}), Variant("linear", {})],
        heads=4,
        head_dim=32,
        min_run_time_s=0.01,
        error=False,
    )
    run_sweep(spec, str(out), progress=False)
    rows = load(str(out))
    s = summary(rows).set_index("label")
    assert s.loc["naive", "mem_exponent"] > 1.8, s
    assert s.loc["linear", "mem_exponent"] < 1.3, s
    power = rows["label"].map({"naive": 2.0, "linear": 1.0})
    rows["time_ms"] = 1e-6 * rows["seq_len"].astype(float) ** power
    s = summary(rows).set_index("label")
    # the fit to the medians (time_exponent itself fits the round samples scaled by the peak)
    assert abs(s.loc["naive", "time_exponent_raw"] - 2.0) < 1e-6, s
    assert abs(s.loc["linear", "time_exponent_raw"] - 1.0) < 1e-6, s


def test_isolated_point_runs_in_its_own_process(tmp_path):
    spec = SweepSpec(seq_lens=[64], variants=[Variant("full", {})], heads=2, head_dim=8, min_run_time_s=0.01)
    rows = run_sweep(spec, str(tmp_path / "r.jsonl"), isolate=True, progress=False)
    assert rows[0]["status"] == "ok" and rows[0]["isolated"] is True


def test_default_bench_cli_prints_summary(run_cli, tmp_path):
    r = _bench(run_cli, tmp_path, "--seq-lens", "64,128", "--attn", "full,sliding_window:window=8", "--out", "r.jsonl")
    assert r.returncode == 0, r.stderr
    assert "scaling (log-log fit)" in r.stdout and "sliding_window:window=8" in r.stdout
    assert "[4/4]" in r.stderr  # plain progress lines when not on a terminal


@pytest.mark.slow
def test_find_max_len_bisects_to_the_budget(run_cli, tmp_path):
    """naive keeps the scores and the probabilities alive together: about 2 * heads * n^2 * 4
    bytes (measured: 273 MB at n = 2048 with 8 heads). With 2 heads and a 64 MiB budget that puts
    the limit just under 2048, above 1024 (16 MiB); linear fits everywhere up to the 16k limit."""
    budget = 64 * 2**20
    r = run_cli(
        "bench",
        "--find-max-len",
        "--attn",
        "naive,linear",
        "--memory-budget",
        "64MB",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--seq-lens",
        "1k,16k",
        "--min-run-time",
        "0.01",
        "--out",
        "m.jsonl",
        cwd=str(tmp_path),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stdout.splitlines() if x.strip().startswith("naive")][0]
    best = int(line.split()[-1])
    assert 1024 < best < 2048, r.stdout
    lin = [x for x in r.stdout.splitlines() if x.strip().startswith("linear")][0]
    assert int(lin.split()[-1]) == 16384
    probes = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    naive = {p["seq_len"]: p for p in probes if p["label"] == "naive"}
    assert naive[best]["status"] == "ok" and naive[best]["peak_mem_bytes"] <= budget
    above = [n for n in naive if n > best]
    assert above and all(naive[n]["status"] == "oom" for n in above)
    assert min(above) - best <= max(64, best // 16)  # bisected to the stated resolution


@pytest.mark.slow
def test_trained_inputs_give_peaked_attention_and_error_columns(run_cli, tmp_path):
    """--inputs trained: q, k, v from a backbone trained on MQAR (cached on disk once)."""
    env = {"EFFATTN_CACHE_DIR": str(tmp_path / "cache")}
    args = [
        "bench",
        "--attn",
        "full,performer:num_features=16,sliding_window:window=4",
        "--seq-lens",
        "64",
        "--heads",
        "2",
        "--head-dim",
        "8",
        "--min-run-time",
        "0.01",
    ]
    r = run_cli(*args, "--inputs", "trained", "--out", "t.jsonl", cwd=str(tmp_path), env_extra=env)
    assert r.returncode == 0, r.stderr
    assert "training a 2x8 backbone on MQAR once" in r.stderr
    assert list((tmp_path / "cache").glob("trained-mqar-*.pt"))
    rows = {x["label"]: x for x in map(json.loads, (tmp_path / "t.jsonl").read_text().splitlines())}
    assert all(x["inputs"] == "trained" and x["status"] == "ok" for x in rows.values())
    assert rows["full"]["rel_err_vs_full"] == 0.0
    assert rows["performer:num_features=16"]["rel_err_vs_full"] > 0
    assert rows["sliding_window:window=4"]["rel_err_vs_own_dense"] < 1e-5
    # the second run finds the cached backbone and does not train again
    r = run_cli(*args, "--inputs", "trained", "--out", "t2.jsonl", cwd=str(tmp_path), env_extra=env)
    assert r.returncode == 0 and "training" not in r.stderr


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _progress_rows():
    ok = {"label": "full", "seq_len": 64, "status": "ok", "time_ms": 1.25}
    bad = {"label": "linear", "seq_len": 64, "status": "error", "time_ms": None, "reason": "ValueError: boom"}
    return ok, bad


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from effattn.bench.sweep import LineProgress
    from effattn.cli.progress import ClickProgress

    ok, bad = _progress_rows()
    term = _Terminal()
    p = ClickProgress(term)
    p.begin(2)
    p.start("2 variant(s)", 64)
    p.finish(ok)
    p.finish(bad)
    p.close()
    shown = term.getvalue()
    assert "points" in shown and "2/2" in shown and "2 variant(s) n=64" in shown and "[#" in shown
    assert "linear n=64: error (ValueError: boom)" in shown  # a failure stays on screen
    assert "full n=64: ok" not in shown  # an ok point only moves the bar
    assert shown.endswith("\n")  # the bar's line is ended on close

    for reporter in (ClickProgress(io.StringIO()), LineProgress(io.StringIO())):
        reporter.begin(2)
        reporter.start("2 variant(s)", 64)
        reporter.finish(ok)
        reporter.finish(bad)
        reporter.close()
        lines = reporter.stream.getvalue().splitlines()
        assert lines == ["[1/2] full n=64: ok 1.25 ms", "[2/2] linear n=64: error (ValueError: boom)"]


def test_a_sweep_reports_to_a_reporter_of_ones_own(tmp_path):
    class Record:
        def __init__(self):
            self.calls = []

        def begin(self, total):
            self.calls.append(("begin", total))

        def start(self, label, n, running=1):
            self.calls.append(("start", n))

        def finish(self, row):
            self.calls.append(("finish", row["label"], row["seq_len"]))

        def close(self):
            self.calls.append(("close",))

    spec = SweepSpec(seq_lens=[16, 32], variants=[Variant("full", {})], heads=2, head_dim=8, min_run_time_s=0.01)
    rec = Record()
    run_sweep(spec, str(tmp_path / "r.jsonl"), progress=rec)
    assert rec.calls == [
        ("begin", 2),
        ("start", 16),
        ("finish", "full", 16),
        ("start", 32),
        ("finish", "full", 32),
        ("close",),
    ]


def test_progress_with_nothing_left_to_measure_draws_no_bar():
    from effattn.cli.progress import ClickProgress

    term = _Terminal()
    p = ClickProgress(term)
    p.begin(0)
    p.close()
    assert "0/1" not in term.getvalue() and "[" not in term.getvalue(), term.getvalue()
