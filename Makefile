# effattn developer tasks. `make test` and `make bench` set up .venv on first use (idempotent).
# torch is pinned to the CPU build that this machine's pip serves from disk; on a GPU machine
# override it, e.g. `make TORCH_SPEC='torch==2.13.0 --index-url ...' test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.effattn-installed
DOCS_STAMP := $(VENV)/.effattn-docs-installed

.PHONY: setup test test-fast bench report lint docs browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,ray,peers]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The default sweep (every available built-in, n = 256..4k, fp32 forward), then its report.
bench: $(STAMP)
	$(VENV)/bin/effattn bench --out results/bench-latest.jsonl --overwrite
	$(VENV)/bin/effattn report results/bench-latest.jsonl --out results/bench-latest-report --format md,html

# Regenerate the committed reference report (results/scaling-cpu/report/) from the two committed
# sweeps beside it.
SCALING := results/scaling-cpu
report: $(STAMP)
	rm -rf $(SCALING)/report
	$(VENV)/bin/effattn report $(SCALING)/cpu-sweep-256-16k.jsonl $(SCALING)/fwdbwd-8k-cpu.jsonl --out $(SCALING)/report --format md,html

# ruff: the linter and the formatter check (configured in pyproject.toml, pinned in the dev extra)
lint: $(STAMP)
	$(VENV)/bin/ruff check effattn tests benchmarks
	$(VENV)/bin/ruff format --check effattn tests benchmarks

# The documentation site (mkdocs.yml: docs/ and the API reference from the docstrings) in site/,
# --strict: a broken link or anchor, a page left out of the nav or an unreadable docstring fails it.
# The docs extra goes in after the setup, so that pip finds the CPU torch already there.
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

# Headless Chromium and its driver (Debian's packages; needs root) for tests/test_report_browser.py,
# which opens the HTML report in it. Without them that test skips, unless EFFATTN_REQUIRE_BROWSER=1.
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info site
