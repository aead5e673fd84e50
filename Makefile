# eroseg-at: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CKPT ?=
ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from the exact release this project is tested with (served from local disk here).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: ## Create .venv with torch 2.14.1 and the package (editable, with dev extras)
	rm -f $(STAMP)
	$(MAKE) $(STAMP)

train: $(STAMP) ## The main job: EroSeg-AT on the embedded shapes dataset (ARGS= for more overrides)
	$(PY) train.py experiment=shapes_eroseg_at $(ARGS)

train-clean: $(STAMP) ## Standard (non-adversarial) training of the default model on shapes
	$(PY) train.py $(ARGS)

DEMO_DIR := outputs/demo
# What the demo trains and evaluates with (tests/test_demo.py reads these two lines). The gradient-masking checks on
# 8 images, Square at 100 queries: a first look at the verdict, not a full check.
DEMO_TRAIN := experiment=quickstart
DEMO_EVALUATE := suite=quick masking_checks.images=8 masking_checks.queries=100
demo: $(STAMP) ## A first run in about 3 minutes: EroSeg-AT of an ImageNet-initialised model on part of shapes, then a short robustness report
	rm -rf $(DEMO_DIR)
	$(PY) train.py $(DEMO_TRAIN) hydra.run.dir=$(DEMO_DIR)/train $(ARGS)
	$(PY) evaluate.py ckpt_path=$(DEMO_DIR)/train/checkpoints/last.ckpt $(DEMO_EVALUATE) hydra.run.dir=$(DEMO_DIR)/evaluate

test: $(STAMP) ## Run the default test suite (everything not marked slow or gpu)
	$(PY) -m pytest

test-slow: $(STAMP) ## Run the slow tests (attack strength, cross-checks, end-to-end training), printing their figures
	$(PY) -m pytest -m slow -s

test-gpu: $(STAMP) ## Run the CUDA tests (attacks in fp32/bf16, bf16 and DDP training, evaluation); needs a GPU
	$(PY) -m pytest -m gpu

lint: $(STAMP) ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## ruff format and autofix
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

eval: $(STAMP) ## Robustness report of checkpoints: make eval CKPT='outputs/train/**/best*.ckpt' [ARGS='suite=full']
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=<checkpoint path or glob> [ARGS='suite=paper ...']"; exit 2; }
	$(PY) evaluate.py "ckpt_path=$(CKPT)" $(ARGS)

reproduce: $(STAMP) ## Small-scale reproduction of the paper's table on shapes (writes docs/RESULTS.md)
	$(PY) scripts/reproduce.py $(ARGS)

bench: $(STAMP) ## Benchmarks: attack overhead and adversarial-training step
	# The peers of the cross-checks; --no-deps: torchattacks pins requests~=2.25, which breaks huggingface_hub.
	$(PY) -m pip install --quiet --no-deps "torchattacks>=3.5" "cospgd>=0.1.3"
	$(PY) benchmarks/attack_overhead.py
	$(PY) benchmarks/at_step.py

clean: ## Remove run outputs (outputs/, multirun/, wandb/)
	rm -rf outputs multirun wandb lightning_logs .pytest_cache

.PHONY: help install train train-clean demo test test-slow test-gpu lint format eval reproduce bench clean
