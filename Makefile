# crossfl: one command each. Every target sets itself up (venv + pinned packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CROSSFL := $(BIN)/crossfl
STAMP := $(VENV)/.installed-stamp

DATA_DIR := build/data/chem
MODEL_DIR := build/models/tiny-llama
EXP ?= deploy/experiments/local-demo.yaml

.PHONY: setup demo test test-fast lint data model experiment simulate bench clean

setup: $(STAMP)

# APPFL (numerical oracle, `appfl:<Class>` strategies) goes in with --no-deps: its declared
# extras pull a torchvision that does not import beside our torch (see requirements/appfl.txt).
$(STAMP): pyproject.toml requirements/constraints.txt requirements/appfl.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[train,data,sim,test]'
	$(BIN)/pip install -q --no-deps -r requirements/appfl.txt
	@touch $@

data: $(DATA_DIR)/train.jsonl
$(DATA_DIR)/train.jsonl: | $(STAMP)
	$(CROSSFL) data build-chem --out $(DATA_DIR)

model: $(MODEL_DIR)/config.json
$(MODEL_DIR)/config.json: $(DATA_DIR)/train.jsonl | $(STAMP)
	$(CROSSFL) model build-tiny --data $(DATA_DIR)/train.jsonl --out $(MODEL_DIR)

## make demo: the whole federation on this machine (data, model, three local sites, FedAvg)
demo: setup data model
	$(CROSSFL) run deploy/experiments/local-demo.yaml

## make experiment EXP=deploy/experiments/NAME.yaml
experiment: setup
	$(CROSSFL) run $(EXP)

## make simulate EXP=local-demo QUEUES=deploy/queues/high-variance.yaml [SEEDS=N] [COMPARE=1]
## [REPRODUCE=1] [WORKERS=N]: replay an experiment in virtual time against facility queues
## (crossfl simulate); COMPARE=1: the comparison, REPRODUCE=1: APPFL's FedQueue setting
QUEUES ?= deploy/queues/high-variance.yaml
simulate: setup data model
	$(CROSSFL) simulate $(or $(EXP),local-demo) --queues $(QUEUES) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(COMPARE),--compare) $(if $(REPRODUCE),--reproduce) $(if $(WORKERS),--workers $(WORKERS))

## make test: lint, then the test suite (starts its own Slurm/sshd where it can, as root)
test: lint
	$(BIN)/python -m pytest -q

## make test-fast: the unit tier, for everyday work: every test not marked slow (no Slurm,
## sshd, engines, federations or multi-rank training; pyproject.toml [tool.pytest] markers);
## about 2 minutes on 2 cores (README, Tests and benchmarks)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

## make lint: ruff's lint rules and its formatter's check (pyproject.toml [tool.ruff]),
## deptry: every import declared in pyproject.toml, nothing declared unused ([tool.deptry]),
## and mypy over src/ ([tool.mypy])
lint: setup
	$(BIN)/ruff check src tests benchmarks testkit
	$(BIN)/ruff format --check src tests benchmarks testkit
	$(BIN)/deptry src benchmarks testkit containers
	$(BIN)/mypy

## make bench: measured ratios, side by side in one run
bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf build

# Each area adds its targets in a file of its own.
include $(wildcard mk/*.mk)
