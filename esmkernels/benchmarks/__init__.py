"""Benchmarks of the kernels and models against their peers (`esmkernels bench`, the GPU session).

One piece of code measures everything, on CPU and GPU alike:

- `kernels`: the four ops at ESM-2 / ESMFold shapes (`esmkernels.benchmarks.kernels`);
- `lm`: ESM-2 forward, uniform and skewed batches (`esmkernels.benchmarks.lm`);
- `fold`: ESMFold structure prediction (`esmkernels.benchmarks.fold`);
- `memory`: the fold memory model's prediction vs the measured peak (`...memory`).

Providers: `reference`, `torch`, `triton`, `hf` (transformers, when installed). Timing and memory
are measured the same way for all (`esmkernels.benchmarks.timing`); `runner.run_suite` returns
one JSON-ready record per (case, length, provider, mode); `report` prints the table with the
ratio to each peer and draws time / memory vs length. Nothing here is imported by the models.

Example:
    >>> from esmkernels.benchmarks.runner import run_suite  # doctest: +SKIP
    >>> records = run_suite("kernels", providers=["reference", "torch"], lengths=[8])  # doctest: +SKIP
"""
