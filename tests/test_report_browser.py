"""The HTML report opened in a real browser (headless Chromium, driven by Selenium): the page
renders, every image loads, every table is there and no row of a table has more or fewer cells
than its header. Skipped where no Chromium is installed, unless EFFATTN_REQUIRE_BROWSER=1 (as CI
sets it after `make browser`): then a missing browser is a failure, not a skip.

Set EFFATTN_SCREENSHOT=path.png to keep a full-page screenshot for a person to look at."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCALING = ROOT / "results" / "scaling-cpu"
REFERENCE = [SCALING / "cpu-sweep-256-16k.jsonl", SCALING / "fwdbwd-8k-cpu.jsonl"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _driver():
    """A headless Chromium, or the reason there is none here."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[dev]')"
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    chromedriver = shutil.which("chromedriver")
    if not binary or not chromedriver:
        return None, "no Chromium and chromedriver here (`make browser` installs Debian's)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        "--window-size=1280,1000",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=opts), None


@pytest.fixture(scope="module")
def browser():
    drv, why = _driver()
    if drv is None:
        if os.environ.get("EFFATTN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"EFFATTN_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    yield drv
    drv.quit()


PAGE_FACTS = """
const imgs = Array.from(document.images).map(i => ({src: i.getAttribute('src'), done: i.complete,
                                                    w: i.naturalWidth, h: i.naturalHeight}));
const tables = Array.from(document.querySelectorAll('table')).map(t => {
  const rows = Array.from(t.rows).map(r => r.cells.length);
  return {rows: rows.length, widths: rows, caption: (t.previousElementSibling || {}).textContent || ''};
});
return {title: document.title, imgs: imgs, tables: tables, h1: (document.querySelector('h1') || {}).textContent,
        text: document.body.innerText.length, height: document.documentElement.scrollHeight,
        width: document.documentElement.scrollWidth, viewport: window.innerWidth};
"""


def _facts(drv, html: Path) -> dict:
    drv.get(html.as_uri())
    return drv.execute_script(PAGE_FACTS)


def _check(facts: dict, images_expected: int):
    assert facts["title"] == "effattn report" and facts["h1"] == "effattn report", facts["title"]
    broken = [i["src"] for i in facts["imgs"] if not (i["done"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert len(facts["imgs"]) >= images_expected, facts["imgs"]
    assert len(facts["tables"]) >= 5, facts["tables"]
    for t in facts["tables"]:
        assert t["rows"] >= 2, f"a table without rows: {t}"
        assert len(set(t["widths"])) == 1, f"a row with more or fewer cells than its header: {t}"
    assert facts["width"] <= facts["viewport"] + 1, "the page scrolls sideways"


INTERACTIVE = ("time", "memory", "error", "decision_map")

PLOT_FACTS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => ({
  id: d.id, svg: d.querySelectorAll('svg.main-svg').length, traces: (d.data || []).length,
  drawn: d.querySelectorAll('.scatterlayer .trace, .heatmaplayer .hm, .imagelayer image').length,
  legend: d.querySelectorAll('.legend .traces').length, types: (d.data || []).map(t => t.type),
  xlog: d.layout.xaxis.type, ylog: d.layout.yaxis.type}));
"""


def _requests(drv) -> list[str]:
    """The URLs of every request the page made since the last call (Chrome's network log)."""
    import json

    urls = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _check_interactive(drv, html: Path):
    """Plots drawn by plotly: log axes, traces on the page, hover values, a legend that hides a
    trace on a click, and no request to anything but the file itself and its images."""
    from selenium.webdriver.common.by import By

    _requests(drv)  # drop the log of earlier pages
    drv.get(html.as_uri())
    plots = drv.execute_script(PLOT_FACTS)
    ids = [p["id"] for p in plots]
    assert {"plot-time", "plot-memory"} <= set(ids) and any(i.startswith("plot-map_") for i in ids), ids
    for p in plots:
        assert p["svg"] >= 1 and p["traces"] >= 1 and p["drawn"] >= 1, p
        assert p["xlog"] == "log" and p["ylog"] == "log", p
    assert any("heatmap" in p["types"] for p in plots), "no decision map drawn"
    # hover: the first point of the time plot shows its time and interval
    drv.execute_script("Plotly.Fx.hover('plot-time', [{curveNumber: 0, pointNumber: 0}]);")
    hover = drv.execute_script(
        "return Array.from(document.querySelectorAll('#plot-time .hovertext')).map(e => e.textContent).join(' ');"
    )
    assert "ms" in hover and "95%" in hover and "status" in hover, hover
    # a click on the first legend entry hides that variant's trace
    assert drv.execute_script("return document.getElementById('plot-time').data[0].visible;") in (None, True)
    drv.find_element(By.CSS_SELECTOR, "#plot-time .legend .traces .legendtoggle").click()
    state = None
    for _ in range(30):  # plotly acts on a single click after its double-click delay (300 ms)
        state = drv.execute_script("return document.getElementById('plot-time').data[0].visible;")
        if state == "legendonly":
            break
        time.sleep(0.1)
    assert state == "legendonly", state
    urls = _requests(drv)
    outside = [u for u in urls if not u.startswith(("file://", "data:", "blob:", "about:"))]
    assert urls and not outside, f"the page fetched {outside}"
    return plots


def test_the_reference_report_renders_in_a_browser(browser, tmp_path):
    """Built now, by this code, from the committed reference sweep."""
    from effattn.report import build_report

    out = tmp_path / "rep"
    written = build_report([str(p) for p in REFERENCE], str(out), ("md", "html"))
    facts = _facts(browser, out / "report.html")
    plots = [w for w in written if w.endswith(".png") and not Path(w).stem.startswith(INTERACTIVE)]
    patterns = list(out.glob("pattern_*.png"))
    assert plots and patterns
    _check(facts, len(plots) + len(patterns))
    _check_interactive(browser, out / "report.html")
    shot = os.environ.get("EFFATTN_SCREENSHOT")
    if shot:
        browser.set_window_size(1280, min(int(facts["height"]) + 100, 16000))
        browser.save_screenshot(shot)


def test_the_committed_reference_report_renders_in_a_browser(browser):
    """What a reader of the repository opens."""
    html = SCALING / "report" / "report.html"
    facts = _facts(browser, html)
    _check(facts, len([p for p in html.parent.glob("*.png") if not p.stem.startswith(INTERACTIVE)]))
    _check_interactive(browser, html)


def test_the_interactive_check_sees_a_page_that_fetches_and_a_legend_that_does_not_hide(browser, tmp_path):
    """Not vacuous: the same report with its bundle loaded from the network, and with legend
    clicks turned off, fails the check."""
    from effattn.report import build_report

    out = tmp_path / "rep"
    build_report([str(REFERENCE[0])], str(out), ("html",))
    page = out / "report.html"
    text = page.read_text()
    head, _, rest = text.partition("<script>")
    bundle, _, tail = rest.partition("</script>")
    (out / "plotly.js").write_text(bundle)
    page.write_text(head + "<script src='plotly.js'></script><img src='https://example.invalid/x.png'>" + tail)
    with pytest.raises(AssertionError, match="fetched"):
        _check_interactive(browser, page)
    stop = "document.querySelectorAll('.js-plotly-plot').forEach(d => d.on('plotly_legendclick', () => false));"
    page.write_text(text.replace("</body>", f"<script>{stop}</script></body>"))
    with pytest.raises(AssertionError, match="legendonly"):
        _check_interactive(browser, page)
