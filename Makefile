# `make demo` and `make test` create the virtual environment when it is missing. torch==2.13.0 is
# installed first (the CPU wheel), so pip never resolves a multi-GB CUDA build for the package's `torch`;
# everything else is installed at the versions in constraints/tested.txt, the set the suite passes with.
# `make test-latest` builds a separate environment with the newest releases and runs the same suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LATEST_VENV ?= .venv-latest
TESTED := constraints/tested.txt
PINNED_TORCH := constraints/torch.txt
# the packages whose versions the README states
SHOWN := '^(torch|transformers|accelerate|peft|huggingface.hub|safetensors|tokenizers|pillow|numpy|datasets)=='

$(BIN)/.installed: setup.py $(TESTED)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c $(TESTED) -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/vlmzoo demo

test: venv
	$(BIN)/python -m pytest tests -q

# every tiny preset of every family through the common and bad-input suites (the default run takes one per family
# and LM kind), and the property-based tests with 1,000 generated cases per property and family
test-thorough: venv
	VLMZOO_TEST_VARIANTS=1 HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest tests -q

# newest releases of everything but torch, in a fresh environment of its own
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet torch==2.13.0
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -c $(PINNED_TORCH) -e ".[test]"
	@echo "newest releases under test:"; $(LATEST_VENV)/bin/pip freeze | sed 's/+cpu//' | grep -iE $(SHOWN)
	$(LATEST_VENV)/bin/python -m pytest tests -q

.PHONY: venv demo test test-thorough test-latest
