# One command sets up and runs the main job (make demo); one sets up and runs the tests (make test).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
OUT ?= runs/demo

.PHONY: demo test install install-test bench clean chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)
install-test: $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeopt demo -o $(OUT)

test: $(TEST_STAMP) chromium
	$(PY) -m pytest -q

# Debian's chromium for the dashboard's browser test (driven by Playwright; never a browser download).
# Installed only as root with apt-get; otherwise that one test says why it skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: apt-get could not install chromium; the browser test will skip"; \
	  else echo "note: chromium is missing and this is not root: the browser test will skip"; fi; }

bench: $(STAMP)
	$(PY) benchmarks/minilm.py

clean:
	rm -rf $(VENV) runs .pytest_cache
