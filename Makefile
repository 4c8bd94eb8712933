# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): setup.py constraints-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints-test.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The bundled demo model (llama/demo/): both reference examples, streamed; then how to chat with it.
demo: $(STAMP)
	$(PY) example_text_completion.py --stream
	$(PY) example_chat_completion.py --stream
	@echo "Chat with the demo model: $(PY) -m llama.chat"

clean:
	rm -rf $(VENV) build *.egg-info
