# Broadway: `make demo` runs the whole system once; `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv docker browser test lint demo bench clean

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(STAMP)

docker:
	@bash scripts/ensure-docker.sh

# The dashboard's tests drive Debian's headless Chromium; nothing is downloaded at run time.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: venv docker browser
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: venv docker
	$(BIN)/python -m utils.demo

bench: venv docker
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/callbacks.py
	$(BIN)/python bench/callbacks_delivery.py
	$(BIN)/python bench/fairness.py
	$(BIN)/python bench/images.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
