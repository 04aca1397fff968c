# streampulse — `make help` lists what each target does.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.native

.DEFAULT_GOAL := help
.PHONY: help demo test unit lint kafka-jars bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'
	touch $(STAMP)

# The playback fold in Rust (native/): about 1.5x the events/s on all metrics. Without cargo the flows fold in Python.
$(NATIVE): $(STAMP) native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)
	@if command -v cargo >/dev/null 2>&1; then \
		echo "building the native playback fold (native/, Rust)"; \
		$(BIN)/pip install --quiet ./native && touch $(NATIVE); \
	else echo "no Rust toolchain (cargo, https://rustup.rs): playback events fold in Python, about a third slower"; fi

demo: $(NATIVE) ## run the embedded default: local broker + Redis, load generator, flows, /metrics, live view (Ctrl-C stops all)
	$(BIN)/streampulse demo $(ARGS)

kafka-jars: ## fetch Apache Kafka's jars from Maven Central for the integration tests (needs Java 17 + Maven)
	bash tools/kafka/fetch-kafka.sh

test: $(NATIVE) ## lint, then unit and integration tests on real Kafka, Redis and Prometheus (fetched into ~/.cache/streampulse; no root)
	$(MAKE) --no-print-directory lint
	@if command -v java >/dev/null 2>&1; then bash tools/kafka/fetch-kafka.sh; \
	else echo "make test: no Java on this machine: integration tests run on the embedded stack (tansu + valkey) only"; fi
	@bash tools/prometheus/fetch-prometheus.sh
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(NATIVE) ## only the tests that need no services
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: $(NATIVE) ## ruff and mypy, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

bench: $(NATIVE) ## benchmarks: throughput vs the limit and a baseline, scale-out on 1-4 processes, peers (Quix Streams, Pathway), freshness, memory (ARGS="--quick" for a small run)
	@if command -v java >/dev/null 2>&1; then bash tools/kafka/fetch-kafka.sh; \
	else echo "make bench: no Java on this machine: the Quix Streams peer (needs Apache Kafka) is skipped, Pathway runs on tansu"; fi
	$(BIN)/python -m bench $(ARGS)

clean: ## remove the virtual environment and caches (not the Kafka jars and Prometheus in ~/.cache/streampulse)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
