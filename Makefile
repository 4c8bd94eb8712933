# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean test-tools

$(STAMP): setup.py constraints-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints-test.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# download.sh's tests use wget, curl and shellcheck; install them where we can (root with apt),
# otherwise those tests skip with a reason.
test-tools:
	@missing=""; for t in wget curl shellcheck; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null 2>&1 \
		|| echo "note: could not install$$missing; tests that need them will skip"; \
	fi

test: $(STAMP) test-tools
	$(PY) -m pytest -q tests

# The bundled demo model (llama/demo/): both reference examples, streamed; then how to chat with it.
demo: $(STAMP)
	$(PY) example_text_completion.py --stream
	$(PY) example_chat_completion.py --stream
	@echo "Chat with the demo model: $(PY) -m llama.chat"

clean:
	rm -rf $(VENV) build *.egg-info
