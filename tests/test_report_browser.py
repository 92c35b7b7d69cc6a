"""The HTML report opened in a real browser (headless Chromium, driven by Selenium): the page
renders, every image loads, every table is there and no row of a table has more or fewer cells
than its header. Skipped where no Chromium is installed, unless EFFATTN_REQUIRE_BROWSER=1 (as CI
sets it after `make browser`): then a missing browser is a failure, not a skip.

Set EFFATTN_SCREENSHOT=path.png to keep a full-page screenshot for a person to look at."""

from __future__ import annotations

import os
import shutil
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


def test_the_reference_report_renders_in_a_browser(browser, tmp_path):
    """Built now, by this code, from the committed reference sweep."""
    from effattn.report import build_report

    out = tmp_path / "rep"
    written = build_report([str(p) for p in REFERENCE], str(out), ("md", "html"))
    facts = _facts(browser, out / "report.html")
    plots = [w for w in written if w.endswith(".png")]
    patterns = list(out.glob("pattern_*.png"))
    assert plots and patterns
    _check(facts, len(plots) + len(patterns))
    shot = os.environ.get("EFFATTN_SCREENSHOT")
    if shot:
        browser.set_window_size(1280, min(int(facts["height"]) + 100, 16000))
        browser.save_screenshot(shot)


def test_the_committed_reference_report_renders_in_a_browser(browser):
    """What a reader of the repository opens."""
    html = SCALING / "report" / "report.html"
    facts = _facts(browser, html)
    _check(facts, len(list(html.parent.glob("*.png"))))


def test_the_check_sees_a_broken_image_and_a_split_cell(browser, tmp_path):
    """Not vacuous: a page with a missing image and a row with an extra cell fails the check."""
    page = tmp_path / "bad.html"
    rows = "".join("<tr><td>a</td><td>b</td></tr>" for _ in range(3))
    tables = "".join(f"<table><tr><th>x</th><th>y</th></tr>{rows}</table>" for _ in range(5))
    page.write_text(
        "<!doctype html><html><head><title>effattn report</title></head><body><h1>effattn report</h1>"
        f"<img src='missing.png'>{tables}</body></html>"
    )
    with pytest.raises(AssertionError, match="did not load"):
        _check(_facts(browser, page), 1)
    page.write_text(
        page.read_text()
        .replace("<img src='missing.png'>", "")
        .replace("<tr><td>a</td><td>b</td></tr>", "<tr><td>a</td><td>b</td><td>c</td></tr>", 1)
    )
    with pytest.raises(AssertionError, match="more or fewer cells than its header"):
        _check(_facts(browser, page), 0)
