# `make demo` and `make test` create the virtual environment when it is missing. torch==2.13.0 is
# installed first (the CPU wheel), so pip never resolves a multi-GB CUDA build for the package's `torch`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/vlmzoo demo

test: venv
	$(BIN)/python -m pytest tests -q

.PHONY: venv demo test
