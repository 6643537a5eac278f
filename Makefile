# The two set-up commands in README.md: `make demo` and `make test`.
# Each creates .venv when missing and installs the project into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# DeepSpeed JIT-compiles C++ ops on first use (~1 min each); keep them across runs.
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/recbatch/torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
DEMO_ROOT ?= runs/demo

.PHONY: demo test install clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a looser spec would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recbatch demo --root $(DEMO_ROOT)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30

clean-demo:
	rm -rf $(DEMO_ROOT)
