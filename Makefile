# One command surface for people, hooks and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv
# Every install is uv.lock, with these extras; `make lock` writes the lock after a dependency change.
EXTRAS := --extra dev --extra spark --extra team
CONFIG ?= configs/iris.yaml
HOST ?= 127.0.0.1
PORT ?= 8000
UI_PORT ?= 5000

# The embedded store unless the caller points elsewhere.
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
# Usage telemetry would try to reach the network on every call; there is none here.
export MLFLOW_DISABLE_TELEMETRY ?= true
# mlflow server 3.17 starts eight job workers otherwise; too many for a 2-core machine.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
# `mlflow run` starts `python -m pipeline`: it must find the venv's python.
export PATH := $(abspath $(BIN)):$(PATH)
export SERVING_HOST ?= $(HOST)
export SERVING_PORT ?= $(PORT)

.PHONY: help venv lock run pipeline serve ui test test-fast lint format clean bench-serving \
	bench-cli bench-monitor bench-registry bench-prediction-log bench-score bench-pipeline \
	bench-hostile bench-drift tracking-server monitor retrain replay live-compare live-gate

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# pip only brings uv, at the release uv.lock pins; uv then makes .venv exactly the lock (the project
# editable, uv itself kept) with the interpreter found above: it never downloads one ([tool.uv]).
# --locked refuses a uv.lock that no longer matches pyproject.toml rather than install it.
# --compile-bytecode: uv leaves compiling to the first import, and with PYTHONDONTWRITEBYTECODE set
# (as on CI machines) every process would compile mlflow again: 4 s more per CLI call.
$(UV):
	@echo "[1/2] creating $(VENV) with $(PYTHON) and installing uv (pinned by uv.lock) ..."
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		"uv==$$($(PYTHON) tools/lockfile.py uv-version)"

# uv draws progress only on a terminal; the lines around it say what the quiet minutes are.
$(STAMP): pyproject.toml uv.lock | $(UV)
	@echo "[2/2] installing the locked dependencies into $(VENV) (about 100 s the first time) ..."
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --compile-bytecode $(EXTRAS) --python $(BIN)/python
	@touch $(STAMP)
	@echo "installed. In a new shell, run 'source $(VENV)/bin/activate' before the commands in README.md."

venv: $(STAMP) ## create .venv and install the project with its dev tools from uv.lock

# The lock names PyPI as every package's source, so it installs the same on any machine.
lock: | $(UV) ## resolve pyproject.toml into uv.lock, write conda.yaml from it (LOCK_ARGS=--upgrade)
	$(UV) lock --python $(BIN)/python $(LOCK_ARGS)
	$(BIN)/python tools/lockfile.py conda

run: $(STAMP) ## train, register and promote on CONFIG, then serve the Production model
	$(MAKE) --no-print-directory pipeline
	@echo
	@echo "MLflow UI:   make ui   then open: $$($(BIN)/python -m pipeline ui-url --config $(CONFIG) --base-url http://$(HOST):$(UI_PORT) 2>/dev/null)"
	@echo "Inputs:      curl -s http://$(HOST):$(PORT)/model"
	@echo "Try it:      curl -s -X POST http://$(HOST):$(PORT)/predict -H 'Content-Type: application/json' \\"
	@echo "               -d '{\"sepal_length_cm\": 5.1, \"sepal_width_cm\": 3.5, \"petal_length_cm\": 1.4, \"petal_width_cm\": 0.2}'   (iris)"
	@echo
	$(MAKE) --no-print-directory serve

pipeline: $(STAMP) ## run the whole chain (mlflow run .) on CONFIG
	@# Naming the config's experiment makes the run `mlflow run` creates the candidate's run.
	$(BIN)/mlflow run . --env-manager local -P config=$(CONFIG) \
		--experiment-name "$$($(BIN)/python -m pipeline experiment-name --config $(CONFIG))"

serve: $(STAMP) ## serve models:/<name>/Production of CONFIG over REST on HOST:PORT
	SERVING_MODEL_NAME=$${SERVING_MODEL_NAME:-$$($(BIN)/python -m pipeline model-name --config $(CONFIG))} \
		$(BIN)/python -m serving

ui: $(STAMP) ## start the MLflow UI on UI_PORT and print the runs-table link
	@echo "Runs table: $$($(BIN)/python -m pipeline ui-url --config $(CONFIG) --base-url http://$(HOST):$(UI_PORT) 2>/dev/null || echo 'run make pipeline first')"
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --default-artifact-root ./mlruns --host $(HOST) --port $(UI_PORT)

lint: $(STAMP) ## ruff (lint + format check), mypy and the import contracts
	$(BIN)/ruff check pipeline serving tests bench tools
	$(BIN)/ruff format --check pipeline serving tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix pipeline serving tests bench tools
	$(BIN)/ruff format pipeline serving tests bench tools

# Many tests wait on real processes (servers, mlflow CLI, PostgreSQL); two workers overlap them.
TEST_WORKERS ?= 2

XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# The MLflow UI test (tests/e2e/test_ui_browser.py) drives Debian's chromium with Playwright, which
# cannot download its own browser here. Installed once, from the distribution's registry.
export CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

test: $(STAMP) $(CHROMIUM) lint ## lint, then the whole test suite (TEST_WORKERS=0 runs it in one process)
	$(BIN)/pytest $(XDIST)

$(CHROMIUM):
	@echo "$(CHROMIUM) is missing: installing Debian's chromium for the MLflow UI browser test ..."
	@$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null \
		|| { echo "could not install chromium: run 'apt-get install -y chromium' as root" >&2; exit 1; }
	@echo "installed $$($(CHROMIUM) --version)"

# The developer loop: no lint, and none of the tests that start mlflow/uvicorn or other fresh
# Python processes, Spark or a PostgreSQL-backed server. `make test` runs everything before a push.
test-fast: $(STAMP) ## the quick loop: no lint; no e2e, spark, team or process tests
	$(BIN)/pytest $(XDIST) -m "not e2e and not spark and not team and not process"

bench-serving: $(STAMP) ## benchmark our server against `mlflow models serve` (a few minutes)
	$(BIN)/python -m bench.serving $(BENCH_ARGS)

bench-cli: $(STAMP) ## start-up time of the pipeline CLI commands
	$(BIN)/python bench/cli.py $(BENCH_ARGS)

bench-registry: $(STAMP) ## kill 100 promote/rollback/gate processes at random moments; count inconsistent registries
	$(BIN)/python bench/registry_faults.py $(BENCH_ARGS)

bench-prediction-log: $(STAMP) ## kill -9 the server under load: acknowledged predictions lost; drops under load
	$(BIN)/python bench/prediction_log.py $(BENCH_ARGS)

bench-monitor: $(STAMP) ## streaming drift over a 10M-row prediction log (about 3 min the first time)
	$(BIN)/python bench/monitor.py $(BENCH_ARGS)

bench-score: $(STAMP) ## batch scoring: pandas vs Spark rows/s on 1M rows, pandas peak memory
	$(BIN)/python bench/score.py $(BENCH_ARGS)

bench-pipeline: $(STAMP) ## the training pipeline at scale
	$(BIN)/python -m bench.pipeline_scale $(BENCH_ARGS)

bench-hostile: $(STAMP) ## the server under hostile requests
	$(BIN)/python -m bench.hostile $(BENCH_ARGS)

bench-drift: $(STAMP) ## drift detection quality
	$(BIN)/python -m bench.drift_quality $(BENCH_ARGS)

# make itself exits only 0 or 2, so the command's exit 10 ("act") is said in words; a scheduler
# that branches on 10 calls the command (`python -m pipeline monitor`) or deploy/monitor-retrain.sh.
NEEDS_ACTION = status=$$?; [ $$status != 10 ] || echo "exit status 10: $(1); make exits 2" >&2; exit $$status

monitor: $(STAMP) ## drift and performance of CONFIG's Production model (drift: exit 10, so make exits 2)
	@$(BIN)/python -m pipeline monitor --config $(CONFIG) || { $(call NEEDS_ACTION,drift or degraded performance found: act (make retrain)); }

retrain: $(STAMP) ## monitor, and on drift retrain with the labelled production rows and gate
	@$(BIN)/python -m pipeline retrain --config $(CONFIG) || { $(call NEEDS_ACTION,drift found but no labels to retrain on: send labels (README)); }

# Champion and challenger on live traffic (README): rehearse with held-out rows, compare, decide.
replay: $(STAMP) ## send CONFIG's held-out rows to the running server, then their labels
	$(BIN)/python -m pipeline replay --config $(CONFIG) --url http://$(HOST):$(PORT)

live-compare: $(STAMP) ## champion vs challenger on the logged live traffic of CONFIG's model
	$(BIN)/python -m pipeline live-compare --config $(CONFIG)

live-gate: $(STAMP) ## promote or reject the challenger on live evidence (rejected: exit 10, waiting: exit 20)
	@$(BIN)/python -m pipeline live-gate --config $(CONFIG) || { status=$$?; \
		[ $$status != 10 ] || echo "exit status 10: the challenger was rejected; make exits 2" >&2; \
		[ $$status != 20 ] || echo "exit status 20: not enough live evidence yet; make exits 2" >&2; \
		exit $$status; }

tracking-server: $(STAMP) ## a team tracking server: mlflow server on PostgreSQL, proxied artifacts
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false deploy/tracking-server.sh

clean: ## remove the local store, artifacts, prediction log and caches (keeps .venv)
	rm -rf mlflow.db mlruns/[0-9]* mlruns/models prediction_log .pytest_cache .mypy_cache .ruff_cache
