# Two commands on a fresh machine: `make demo` (the package and what it needs to run) and
# `make test` (that, plus the test extras and the tools download.sh's tests use).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install clean test-tools

$(PY):
	$(PYTHON) -m venv $(VENV)

# The package alone, as a user installs it (torch unpinned).
$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

# With the test extras (pytest, transformers, llama-models), pinned for CI by constraints-test.txt.
$(TEST_STAMP): setup.py constraints-test.txt | $(PY)
	$(PY) -m pip install -q -c constraints-test.txt -e '.[test]'
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

test: $(TEST_STAMP) test-tools
	$(PY) -m pytest -q tests

# The bundled demo model (llama/demo/): both reference examples, streamed; then how to chat with it.
demo: $(STAMP)
	$(PY) example_text_completion.py --stream
	$(PY) example_chat_completion.py --stream
	@echo "Chat with the demo model: $(PY) -m llama.chat"

clean:
	rm -rf $(VENV) build *.egg-info
