"""`effattn report` and `effattn compare` on full, partial and failed sweeps."""

import json

import pytest

from effattn.bench import SweepSpec, run_sweep
from effattn.report import build_report
from effattn.spec import Variant


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep")
    out = d / "r.jsonl"
    spec = SweepSpec(
        seq_lens=[64, 128, 256],
        variants=[
            Variant("full", {}),
            Variant("naive", {}),
            Variant("sliding_window", {"window": 8}),
            Variant("performer", {"num_features": 16}),
        ],
        heads=2,
        head_dim=8,
        min_run_time_s=0.01,
    )
    run_sweep(spec, str(out), progress=False)
    return out


def test_report_renders_tables_plots_patterns(sweep, tmp_path):
    written = build_report([str(sweep)], str(tmp_path / "rep"), ("md", "html"))
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"report.md", "report.html", "time.png", "memory.png", "error.png", "pareto.png"} <= names
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### Time (ms" in md and "**" in md  # best value marked
    assert "time exponent" in md and "sliding_window:window=8" in md
    assert "pattern_sliding_window_window_8.png" in md  # exact variant pictured
    assert "pattern_performer" not in md  # approximate: no pattern
    assert not list((tmp_path / "rep").glob("*.svg"))  # one image format: PNG
    assert "<table>" in (tmp_path / "rep" / "report.html").read_text()


def test_report_survives_partial_and_failed_sweeps(sweep, tmp_path):
    rows = [json.loads(x) for x in sweep.read_text().splitlines()]
    partial = tmp_path / "partial.jsonl"
    keep = [r for r in rows if not (r["label"] == "naive" and r["seq_len"] == 128)]  # a missing point
    for r in keep:
        if r["label"] == "full":  # a variant that hit OOM everywhere
            r.update(status="oom", reason="test", time_ms=None, peak_mem_bytes=None)
    partial.write_text("\n".join(json.dumps(r) for r in keep) + "\n{torn line")
    build_report([str(partial)], str(tmp_path / "p"), ("md",))
    md = (tmp_path / "p" / "report.md").read_text()
    assert "oom" in md and "Points that did not run" in md
    single = tmp_path / "single.jsonl"  # a single length: no slopes, still a report
    single.write_text("\n".join(json.dumps(r) for r in rows if r["seq_len"] == 64) + "\n")
    build_report([str(single)], str(tmp_path / "s"), ("md",))
    assert "### Time" in (tmp_path / "s" / "report.md").read_text()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    build_report([str(empty)], str(tmp_path / "e"), ("md",))
    assert "No points" in (tmp_path / "e" / "report.md").read_text()


def test_report_cli_and_bad_input(sweep, tmp_path, run_cli):
    r = run_cli("report", str(sweep), "--out", str(tmp_path / "c"), "--format", "md,html")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c" / "report.html").exists()
    for args, needle in ((["nothere.jsonl"], "does not exist"), ([str(sweep), "--format", "pdf"], "--format")):
        r = run_cli("report", *args)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _steady(rows):
    """The sweep's rows with steady round times (1% apart around each median) and no load flag.

    These tests are about compare's verdicts. The fixture's own rounds (0.01 s of timing, on a host
    that CI may share) can be spread so widely that 3x slower is honestly "not beyond the noise"; that
    verdict is tested in tests/test_rounds.py. Load detection is tested in
    tests/test_integrity_round2.py."""
    for r in rows:
        r["loaded"], r["load_reasons"] = False, None
        if r.get("time_ms"):
            r["time_raw_ms"] = [r["time_ms"] * (0.95 + 0.01 * i) for i in range(11)]
    return rows


def test_compare_flags_regressions(sweep, tmp_path, run_cli):
    rows = _steady([json.loads(x) for x in sweep.read_text().splitlines()])
    base = tmp_path / "base.jsonl"
    base.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    slower = tmp_path / "slow.jsonl"
    for r in rows:
        if r["label"] == "full" and r.get("time_ms"):
            r["time_ms"] *= 3
            r["time_raw_ms"] = [t * 3 for t in r["time_raw_ms"]]  # the test decides on the rounds
    slower.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    same = run_cli("compare", str(base), str(base))
    assert same.returncode == 0 and "0 regressions" in same.stdout
    r = run_cli("compare", str(base), str(slower))
    assert r.returncode == 1 and "REGRESSION" in r.stdout
    r = run_cli("compare", str(sweep), "nothere.jsonl")
    assert r.returncode == 2


def test_compare_runs_from_python(sweep, tmp_path):
    from effattn.report import compare_runs
    from effattn.results import load

    rows = _steady([json.loads(x) for x in sweep.read_text().splitlines()])
    base = tmp_path / "base.jsonl"
    base.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:
        if r["label"] == "full" and r.get("time_ms"):
            r["time_ms"] *= 3
            r["time_raw_ms"] = [t * 3 for t in r["time_raw_ms"]]
    rows = [r for r in rows if not (r["label"] == "naive" and r["seq_len"] == 256)]  # one point only in base
    slower = tmp_path / "slow.jsonl"
    slower.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = compare_runs(load(str(base)), load(str(slower)))
    verdicts = {(p["label"], p["seq_len"]): p["verdict"] for p in c.points}
    assert c.regressions == 3 and all(verdicts[("full", n)] == "REGRESSION" for n in (64, 128, 256)), verdicts
    assert [(r["label"], r["seq_len"]) for r in c.only_base] == [("naive", 256)] and not c.only_new
    assert all(p["ratio"] == pytest.approx(3.0) for p in c.points if p["label"] == "full")
    same = compare_runs(load(str(base)), load(str(base)))
    assert same.regressions == 0 and len(same.points) == len(c.points) + 1
    for bad in ({"threshold": -0.1}, {"threshold": float("nan")}, {"alpha": 0}, {"alpha": 1.5}):
        with pytest.raises(ValueError):
            compare_runs(load(str(sweep)), load(str(sweep)), **bad)


def test_report_of_mixed_configurations_keeps_them_apart(sweep, tmp_path):
    """Two files, forward and forward+backward: both render, as separate series."""
    bwd = tmp_path / "bwd.jsonl"
    spec = SweepSpec(
        seq_lens=[64, 128], variants=[Variant("full", {})], heads=2, head_dim=8, mode="fwdbwd", min_run_time_s=0.01
    )
    run_sweep(spec, str(bwd), progress=False)
    build_report([str(sweep), str(bwd)], str(tmp_path / "m"), ("md",))
    md = (tmp_path / "m" / "report.md").read_text()
    assert "full [mode=fwd]" in md and "full [mode=fwdbwd]" in md
    # one pattern picture per variant: forward and forward+backward share the pattern
    patterns = md.split("### Attention patterns", 1)[1].split("###", 1)[0]
    assert patterns.count("| full |") == 1 and "[mode=" not in patterns, patterns


def test_report_context_of_a_run_spread_over_workers(sweep, tmp_path):
    """A Ray run's rows come from several workers, each with its own threads and matmul peak:
    the context shows every distinct value, not the first row's."""
    rows = [json.loads(x) for x in sweep.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["env"] = {**r["env"], "threads": 1 + i % 2, "host": f"node{i % 2}"}
        r["matmul_peak_gflops"] = 50.0 + 20 * (i % 2)
        r["worker"] = {"host": f"node{i % 2}", "pid": 100 + i % 3, "ray_node_id": f"id{i % 2}"}
    spread = tmp_path / "spread.jsonl"
    spread.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report([str(spread)], str(tmp_path / "rep"), ("md",))
    ctx = (tmp_path / "rep" / "report.md").read_text().split("### Context", 1)[1]
    assert "1–2 threads" in ctx and "matmul peak 50–70 GFLOP/s" in ctx
    assert "on Ray: " in ctx and "on 2 node(s) (node0, node1)" in ctx
    # a local run has no Ray workers; its matmul peak is each length group's reference (measured in
    # the same rounds as that length's points), so it shows as the range of those values
    build_report([str(sweep)], str(tmp_path / "rep2"), ("md",))
    local = (tmp_path / "rep2" / "report.md").read_text().split("### Context", 1)[1]
    import re

    peaks = sorted({r["matmul_peak_gflops"] for r in map(json.loads, sweep.read_text().splitlines())})
    shown = [float(x) for x in re.findall(r"[\d.]+", local.split("matmul peak", 1)[1].split("GFLOP/s", 1)[0])]
    # (the range's ends as printed: 3 significant figures, so compare within rounding, whatever the magnitude)
    assert (
        "on Ray" not in local
        and shown[0] == pytest.approx(peaks[0], rel=0.01)
        and shown[-1] == pytest.approx(peaks[-1], rel=0.01)
    ), (shown, peaks)


def test_tables_format_numpy_integers_and_mark_the_best():
    """Memory columns arrive as NumPy integers: they were printed raw, in bytes, under "MiB"."""
    import numpy as np
    import pandas as pd

    from effattn.report import table_md

    t = pd.DataFrame({64: [np.int64(2**21), np.int64(2**20)]}, index=["a", "b"], dtype=object)
    md = table_md(t, "Peak memory", "MiB", scale=1 / 2**20)
    assert "| a | 2 |" in md and "| b | **1** |" in md, md
    assert "| --- | ---: |" in md  # numbers right-aligned, names left


def test_a_variant_with_no_value_gets_no_empty_row_and_no_legend_entry(tmp_path):
    """Approximate variants have no FLOP count: the throughput table and the peak-fraction plot
    showed a blank row and a legend entry with no line for each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from effattn.report import table_md
    from effattn.report.plots import _plot_lines

    t = pd.DataFrame({64: [1.5, np.nan, "oom"]}, index=["exact", "approx", "failed"], dtype=object)
    md = table_md(t, "Throughput", "GFLOP/s")
    assert "| exact |" in md and "| failed | oom |" in md and "approx" not in md, md
    df = pd.DataFrame(
        [
            {"label": "exact", "seq_len": 64, "status": "ok", "peak_fraction": 0.5},
            {"label": "approx", "seq_len": 64, "status": "ok", "peak_fraction": np.nan},
            {"label": "failed", "seq_len": 64, "status": "oom", "peak_fraction": np.nan},
        ]
    )
    fig, ax = plt.subplots()
    _plot_lines(ax, df, "peak_fraction")
    assert [h.get_label() for h in ax.get_legend_handles_labels()[0]] == ["exact", "failed"]
    plt.close(fig)


def test_noisy_and_loaded_points_are_listed_by_variant(sweep, tmp_path):
    rows = [json.loads(x) for x in sweep.read_text().splitlines()]
    for r in rows:
        r["noisy"] = r["label"] == "naive"
        r["loaded"] = r["label"] == "full" and r["seq_len"] == 256
        r["load_reasons"] = None  # the flag alone: a host busy while the fixture swept must not add reasons
    f = tmp_path / "flagged.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report([str(f)], str(tmp_path / "rep"), ("md",))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"Noisy points (IQR/median > 10%), 3 of {len(rows)}:\n- naive: n = 64, 128, 256" in md, md
    assert f"**Points measured while the machine was busy**, 1 of {len(rows)}" in md, md
    assert "too few quiet rounds):\n- full: n = 256" in md, md


def test_the_report_shows_both_error_columns_for_what_they_mean(sweep, tmp_path):
    build_report([str(sweep)], str(tmp_path / "rep"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "How far from full attention" in md and "measures the approximation, not a bug" in md
    own = md.split("Correctness of exact variants", 1)[1].split("###", 1)[0]
    assert "sliding_window:window=8" in own and "performer" not in own  # exact variants only


def test_an_all_attending_pattern_is_drawn_black_not_blank(tmp_path, monkeypatch):
    import matplotlib.image as mpimg
    import torch

    from effattn import report

    class Everything(torch.nn.Module):
        exact = True

        def dense_mask(self, n_q, n_k, causal=False):
            return torch.ones(n_q, n_k, dtype=torch.bool)

    from effattn import registry

    class Entry:
        target = Everything
        facts = registry.Facts.of(Everything)

    monkeypatch.setattr(registry, "get_entry", lambda name: Entry)
    monkeypatch.setattr(registry, "create_attention", lambda name, **o: Everything())
    monkeypatch.setattr(registry, "option_names", lambda t: ([], None))
    monkeypatch.setattr(registry, "option_defaults", lambda t: {})
    import pandas as pd

    df = pd.DataFrame([{"label": "everything", "variant": "everything", "options": {}}])
    made = report.pattern_pictures(df, str(tmp_path))
    img = mpimg.imread(str(tmp_path / made[0][1]))
    h, w = img.shape[:2]
    centre = img[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3, :3]
    assert centre.mean() < 0.2, centre.mean()  # black where every pair attends


def test_the_html_report_keeps_a_formula_with_pipes_in_one_cell(sweep, tmp_path):
    """The pattern table's formula `|i - j| <= w` split its row into extra cells, and `<=` showed
    as the literal text `&lt;=`."""
    from html.parser import HTMLParser

    build_report([str(sweep)], str(tmp_path / "rep"), ("md", "html"))

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.rows[-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    p = Rows()
    p.feed((tmp_path / "rep" / "report.html").read_text())
    pattern_rows = [r for r in p.rows if r and r[0] == "sliding_window:window=8" and "|i - j|" in "".join(r)]
    assert len(pattern_rows) == 1, p.rows
    row = pattern_rows[0]
    assert len(row) == 3 and "|i - j| <= window" in row[2], row  # one cell; <= shown as <=, not &lt;=


def test_each_pattern_is_drawn_at_a_size_where_its_structure_shows(tmp_path):
    """BigBird at n = 64 with its default 3 random blocks attended every block: a black square."""
    import matplotlib.image as mpimg
    import pandas as pd

    from effattn.report import pattern_pictures

    df = pd.DataFrame(
        [
            {"label": "bigbird", "variant": "bigbird", "options": {}},
            {"label": "sliding_window", "variant": "sliding_window", "options": {}},
        ]
    )
    made = {label: f for label, f, _ in pattern_pictures(df, str(tmp_path))}
    for label, f in made.items():
        img = mpimg.imread(str(tmp_path / f))[..., :3]
        h, w = img.shape[:2]
        inner = img[h // 8 : 7 * h // 8, w // 8 : 7 * w // 8]  # inside the frame and title
        dark = float((inner.mean(-1) < 0.5).mean())
        assert 0.05 < dark < 0.6, (label, dark)  # some pairs attended, most not


def test_plots_split_exact_from_approximate_and_show_the_speedup_over_full(sweep, tmp_path):
    from effattn.report.plots import _speedups, _split_exact, _style
    from effattn.results import load

    written = build_report([str(sweep)], str(tmp_path / "rep"), ("md",))
    assert "speedup.png" in {p.rsplit("/", 1)[-1] for p in written}
    assert "![speedup](speedup.png)" in (tmp_path / "rep" / "report.md").read_text()
    df = load(str(sweep))
    titles = {t: set(d["label"]) for t, d in _split_exact(df)}
    assert "performer:num_features=16" in titles["approximate variants"]
    assert {"full", "naive", "sliding_window:window=8"} <= titles["exact variants"]
    sp = _speedups(df)
    assert set(sp["label"]) == {"naive", "sliding_window:window=8", "performer:num_features=16"}
    assert (sp["speedup"] > 0).all() and ((sp["lo"] <= sp["speedup"]) & (sp["speedup"] <= sp["hi"])).all()
    assert len({(tuple(_style(i)["color"]), _style(i)["marker"]) for i in range(30)}) == 30  # no look repeats
