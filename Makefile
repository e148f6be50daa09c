# The two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
# `make test-fast`: the in-process unit tests only (under a minute), for the edit-test loop.
# `make fuzz`: the request-path fuzzer with 3000 examples per input kind.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

KSERVE_VENV ?= .venv-kserve

.PHONY: setup demo test test-fast fuzz clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v java >/dev/null 2>&1 || { \
	  echo "TorchServe needs Java 17 and 'java' is not on PATH."; \
	  echo "Install it first: sudo apt-get install openjdk-17-jre-headless (Debian/Ubuntu)"; \
	  echo "or: brew install openjdk@17 (macOS); then rerun make."; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,demo]'
	@touch $@

demo: setup
	$(BIN)/python -m scripts.examples.demo

# KServe's SDK checks the exported InferenceService and is the client of the KServe tests; it pins
# packages (psutil<6) that the serving environment should not get, so it lives in a venv of its own.
$(KSERVE_VENV)/.installed:
	@test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check kserve==0.21.0
	@touch $@

test: setup $(KSERVE_VENV)/.installed
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not integration"

# The request-path fuzzer at length (make test runs it for a few seconds): FUZZ_EXAMPLES per input kind.
FUZZ_EXAMPLES ?= 3000
fuzz: setup
	MAR_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/unit/test_fuzz.py

clean:
	rm -rf artifacts logs key_file.json model_store/*.mar model_store/*-*/
