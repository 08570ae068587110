# One target per README command; every target sets up what it needs first.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
OUT ?= out
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench-sim clean help

help:
	@echo "make demo   set up, then run the main job"
	@echo "make test   set up, then run every test"
	@echo "make lint   ansible-lint (production profile) and yamllint"
	@echo "make bench-sim  simulator benchmark on the real traces"

setup:
	@./scripts/bootstrap.sh

demo: setup
	viocluster simulate --preset demo --out $(OUT)/demo

test: setup
	python -m pytest $(PYTEST_ARGS)

lint: setup
	yamllint -s .
	ansible-lint --profile production

bench-sim: setup
	python bench/bench_simulator.py

clean:
	rm -rf $(OUT) .pytest_cache
