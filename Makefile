# Two commands on a fresh machine: `make demo` (the package and what it needs to run) and
# `make test` (that, plus the test extras and the tools download.sh's tests use).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast lint install clean test-tools

$(PY):
	$(PYTHON) -m venv $(VENV)

# The package alone, without the test extras. constraints.txt pins the torch this project is
# tested with (a CPU build where one is at hand) so that a fresh machine does not pull several GB
# of CUDA packages for the demo; setup.py itself leaves torch unpinned for users.
$(STAMP): setup.py constraints.txt | $(PY)
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $@

# With the test extras (pytest, transformers, llama-models), pinned for CI by constraints.txt.
$(TEST_STAMP): setup.py constraints.txt | $(PY)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@ $(STAMP)

install: $(STAMP)

# download.sh's tests use wget, curl and shellcheck; install them where we can (root with apt),
# otherwise those tests skip with a reason.
test-tools:
	@missing=""; for t in wget curl shellcheck; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null 2>&1 \
		|| echo "note: could not install$$missing; tests that need them will skip"; \
	fi

# ruff (lint and format) and mypy over the package, as configured in pyproject.toml.
lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# What CI runs (.ci/run): the lint, then the whole suite.
test: lint test-tools
	$(PY) -m pytest -q tests

# The inner loop: the suite without the tests marked slow.
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# The bundled demo model (llama/demo/): both reference examples, streamed; then how to chat with it.
demo: $(STAMP)
	$(PY) example_text_completion.py --stream
	$(PY) example_chat_completion.py --stream
	@echo "Chat with the demo model: $(PY) -m llama.chat"

clean:
	rm -rf $(VENV) build *.egg-info
