# One target per README command; every target sets up what it needs first.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
OUT ?= out
PYTEST_ARGS ?=

.PHONY: setup demo demo-down simulate sweep test lint bench-sim bench-sim-scale bench-switch bench-switch-attack bench-vm bench-trade bench-converge bench-faults twin lab-up lab-down clean help

help:
	@echo "make demo   set up, then run the main job: two lab domains trade a machine"
	@echo "make demo-down  remove the lab the demo leaves up"
	@echo "make simulate   the trace-driven simulator on its synthetic workload"
	@echo "make test   set up, then run every test"
	@echo "make lint   ansible-lint (production profile) and yamllint"
	@echo "make sweep      the example grid of reclamation policies (docs/examples/sweep.yml)"
	@echo "make bench-sim     simulator benchmark on the real traces"
	@echo "make bench-sim-scale  simulator on 1,000,000 generated jobs in 8 domains"
	@echo "make bench-switch  switch daemon against the peer overlays"
	@echo "make bench-switch-attack  switch daemon's real traffic with and without an attack"
	@echo "make bench-vm      COW VM boot and kill times"
	@echo "make bench-trade   the live trade between the lab domains, 3 rounds"
	@echo "make bench-converge  site.yml on the lab: first and no-change converge"
	@echo "make twin          one workload in the lab and in the simulator, side by side"
	@echo "make bench-faults  fault drills on the lab: time to recover from each fault"
	@echo "make lab-up / lab-down  the one-machine lab"

setup:
	@./scripts/bootstrap.sh

demo: setup
	viocluster lab demo --out $(OUT)/demo

simulate: setup
	viocluster simulate --preset demo --out $(OUT)/simulate

sweep: setup
	viocluster sweep docs/examples/sweep.yml --out $(OUT)/sweep

test: setup
	python -m pytest $(PYTEST_ARGS)

lint: setup
	yamllint -s .
	ansible-lint --profile production

bench-sim: setup
	python bench/bench_simulator.py

bench-sim-scale: setup
	python bench/bench_simulator_scale.py

bench-switch: setup
	python bench/bench_switch.py

bench-switch-attack: setup
	python bench/bench_switch_attack.py --closed-port

bench-vm: setup
	python bench/bench_vm.py

bench-trade: setup
	python bench/bench_trade.py

bench-converge: setup
	python bench/bench_converge.py

bench-faults: setup
	python bench/bench_faults.py

twin: setup
	python bench/bench_twin.py

lab-up: setup
	viocluster lab up

lab-down: setup
	viocluster lab down

demo-down: lab-down

clean:
	rm -rf $(OUT) .pytest_cache
