# One-command set-up and runs on a fresh CPU-only machine.
#   make demo   - create .venv and install, then embed, fold and score examples/demo.fasta offline
#                 with small random-weight checkpoints (the main job; outputs under demo_out/)
#   make test   - create .venv, install a pinned CPU torch + the package with test extras, run the suite
#   make bench  - same set-up, then run the benchmark suite and record results under bench/results/
# TORCH_SPEC pins torch; on a CPU machine point TORCH_INDEX at a CPU wheel index if your pip
# would otherwise pull the CUDA build (this machine's pip finds the local CPU wheel).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Triton is pinned too: the sm_90 compile checks use its internals and its bundled ptxas, and the
# spill expectations were tuned on this release.
TRITON_SPEC ?= triton==3.9.0
TORCH_INDEX ?=
EXTRAS ?= test,hub,peer,plot
HYPOTHESIS_PROFILE ?= ci
PYTEST_ARGS ?=

VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench mutants lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(VPY) -m pip install -q "$(TRITON_SPEC)"
	$(VPY) -m pip install -q -e ".[$(EXTRAS)]"
	@$(VPY) -c "import torch; print('torch', torch.__version__, 'cuda build' if torch.version.cuda else 'cpu build')"
	touch $(STAMP)

setup: $(STAMP)

# The main job: nothing is downloaded; the output says where everything went.
demo: $(STAMP)
	$(VPY) -m esmkernels demo --out demo_out

# TRITON_INTERPRET=1 makes every kernel run (interpreted) on the CPU; tests/conftest.py sets it too.
# The `slow` tests compile every kernel for sm_90 (no GPU needed) and are part of `make test`;
# `make test-fast` leaves them out for quick local iterations.
test: $(STAMP)
	TRITON_INTERPRET=1 HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(VPY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	TRITON_INTERPRET=1 HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(VPY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(VPY) -m bench.run

# Mutation testing (not part of CI): each curated bug of tests/mutants/mutants.py is applied to a
# scratch copy and the tests it names run fail-fast; prints the kill rate and the survivors.
# MUTANTS="rot- ax-" runs the mutants whose names start so.
MUTANTS ?=
mutants: $(STAMP)
	$(VPY) -m tests.mutants.run $(MUTANTS)

lint: $(STAMP)
	$(VPY) -m pip install -q ruff
	$(VPY) -m ruff check . && $(VPY) -m ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .benchmarks demo_out
