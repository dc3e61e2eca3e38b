"""Benchmarks of the kernels and models against their peers (`esmkernels bench`, the GPU session).

One piece of code measures everything, on CPU and GPU alike:

- `kernels`: the four ops at ESM-2 / ESMFold shapes (`esmkernels.benchmarks.kernels`);
- `lm`: ESM-2 forward, uniform and skewed batches (`esmkernels.benchmarks.lm`);
- `fold`: ESMFold structure prediction (`esmkernels.benchmarks.fold`);
- `memory`: the fold memory model's prediction vs the measured peak (`...memory`);
- `patched`: transformers' EsmForMaskedLM before and after `esmkernels.accelerate` (timed by
  `bench/test_bench_patched.py`).

Providers: `reference`, `torch`, `triton`, `hf` (transformers, when installed). Timing and memory
are measured the same way for all (`esmkernels.benchmarks.timing`); `runner.run_suite` returns
one JSON-ready record per (case, length, provider, mode); `runner.run_benchmarks` runs suites
into a directory (bench.json, plots) and is what `esmkernels bench` calls; `report` prints the
table with the ratio to each peer and draws time / memory vs length. The pytest-benchmark files
under `bench/` and the GPU session (`bench/gpu_phases.py`) take their cases from here: this
package is their one definition. Nothing here is imported by the models.

Example:
    >>> from esmkernels.benchmarks.runner import run_suite  # doctest: +SKIP
    >>> records = run_suite("kernels", providers=["reference", "torch"], lengths=[8])  # doctest: +SKIP
"""
