# One-command set-up and runs on a fresh CPU-only machine.
#   make demo   - create .venv and install, then embed, fold and score examples/demo.fasta offline
#                 with small random-weight checkpoints (the main job; outputs under demo_out/)
#   make test   - create .venv, install a pinned CPU torch + the package with test extras, run the suite
#   make bench  - same set-up, then run the benchmark suite and record results under bench/results/
#   make compat - the GPU image's versions (torch 2.11 / Triton 3.6) in .venv-compat: the non-slow
#                 suite and the sm_90 compile checks (not part of make test: a multi-GB download)
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

.PHONY: setup demo test test-fast bench mutants lint clean compat

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

# The second supported environment: the versions of the GPU image our kernels run on (issue 21;
# docs/COMPATIBILITY.md), checked on this CPU machine. torch 2.11.0 from PyPI is a CUDA build of
# several GB, which is why this is its own target and not part of `make test`. numpy is the newest
# release Triton 3.6's interpreter accepts: from numpy 2.4 on, `int()` of a 1-element array with
# ndim > 0 is a TypeError, and Triton < 3.7's interpreter converts its scalars that way
# (`tensor.__index__`), so every interpreted kernel fails (Triton 3.7 squeezes first). The image
# itself has numpy 2.5 (compiled kernels are unaffected; ops/_compat.py stops an interpreted run
# with one line). Python is this machine's 3.11; the image has 3.12.
COMPAT_VENV ?= .venv-compat
COMPAT_TORCH_SPEC ?= torch==2.11.0
COMPAT_TRITON_SPEC ?= triton==3.6.0
COMPAT_NUMPY_SPEC ?= numpy==2.3.5
COMPAT_TRANSFORMERS_SPEC ?= transformers==5.17.0
COMPAT_SAFETENSORS_SPEC ?= safetensors==0.8.0
COMPAT_PINS = "$(COMPAT_TORCH_SPEC)" "$(COMPAT_TRITON_SPEC)" "$(COMPAT_NUMPY_SPEC)" \
	"$(COMPAT_TRANSFORMERS_SPEC)" "$(COMPAT_SAFETENSORS_SPEC)"
CPY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed

$(COMPAT_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(CPY) -m pip install -q --upgrade pip
	$(CPY) -m pip install -q $(COMPAT_PINS) -e ".[$(EXTRAS)]"
	@$(CPY) -c "import platform, numpy, torch, triton, transformers, safetensors; print('compat:', \
	  'python', platform.python_version(), 'torch', torch.__version__, 'triton', triton.__version__, \
	  'numpy', numpy.__version__, 'transformers', transformers.__version__, \
	  'safetensors', safetensors.__version__)"
	touch $(COMPAT_STAMP)

# The non-slow suite (kernels interpreted), then the sm_90 compile checks (the slow op tests, and
# the spill table's rows for Triton 3.6: ops/_spills.py).
compat: $(COMPAT_STAMP)
	TRITON_INTERPRET=1 HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(CPY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)
	TRITON_INTERPRET=1 HYPOTHESIS_PROFILE=$(HYPOTHESIS_PROFILE) $(CPY) -m pytest -q -p no:cacheprovider -m slow $(PYTEST_ARGS) tests/test_ops_*.py tests/test_spills.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build *.egg-info .pytest_cache .hypothesis .benchmarks demo_out
