"""`esmkernels bench`: time the kernels and models against their peers; table, JSON and plots.

    esmkernels bench --suite kernels --compare reference,torch,triton,hf --lengths 256,512,1024
    esmkernels bench --suite lm --dtype bfloat16
    esmkernels bench --suite all --out bench/results/my-run

Prints one row per (case, mode, length, provider): median time, throughput, peak memory and
the ratio to each other provider (peer time / row time: above 1 the row is faster). Writes
`bench.json` (records, device, torch / triton / transformers versions, commit) and one PNG per
suite (time and memory vs length, one line per provider) under
`bench/results/<date>-<device>-<commit>/` unless `--out` says otherwise. transformers (`hf`) and
matplotlib (plots) are optional: without them the table still prints and the run says what it
left out. On a CPU the default sizes are small (`--size cpu`: ESM-2 8M, L up to 512) and
`triton` runs only under TRITON_INTERPRET=1 (interpreted times are not kernel speeds); `--suite
lm` on a CPU then adds the CPU inference table (transformers fp32 / ours fp32 / bf16 / int8 at
the ESM-2 35M and 150M shapes, L up to 1,024: time ratios, residues/s, int8 quality; about 15
minutes at 1 thread; `lm_cpu.md`). `--threads` default: torch's count, capped at the physical
cores this process may use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from esmkernels.cli._common import EXIT_FAILED, EXIT_OK, UsageError, command_parser
from esmkernels.jobs.threads import add_option as add_threads_option

SUITE_CHOICES = ("kernels", "lm", "fold", "memory", "all")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _lengths(text: str) -> list[int]:
    out = []
    for t in _csv(text):
        try:
            value = int(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--lengths: {t!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"--lengths: {value} must be >= 1")
        out.append(value)
    if not out:
        raise argparse.ArgumentTypeError("--lengths: give at least one length")
    return out


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "bench",
        "benchmark kernels and models against their peers (table, JSON, plots)",
        """
        esmkernels bench --suite kernels --compare reference,torch,triton --lengths 256,1024
        """,
        description=__doc__.split("\n\n", 2)[2],
    )
    p.add_argument("--suite", default="kernels", choices=SUITE_CHOICES)
    p.add_argument(
        "--compare",
        type=_csv,
        default=["reference", "torch", "triton", "hf"],
        help="providers, comma separated (default: reference,torch,triton,hf)",
    )
    p.add_argument("--lengths", type=_lengths, default=None, help="e.g. 256,512,1024")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bfloat16", "float16", "float32"),
        help="auto: bfloat16 on CUDA (float32 for fold), float32 on CPU",
    )
    p.add_argument("--modes", type=_csv, default=["fwd"], help="kernels: fwd,bwd,fwd+bwd")
    p.add_argument("--cases", type=_csv, default=None, help="subset of the suite's cases")
    p.add_argument("--size", default="auto", choices=("auto", "real", "cpu", "tiny"),
                   help="auto: the models' real sizes on CUDA; on a CPU 'cpu', small models at "
                   "lengths that show a trend in about a minute per suite; 'tiny': seconds")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when usable)")
    p.add_argument("--max-time", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--num-recycles", type=int, default=0, help="fold: recycles per call")
    p.add_argument("--chunk-size", type=int, default=None, help="fold: trunk chunk size")
    add_threads_option(p, "; 1 gives steadier timings on a busy machine")
    p.add_argument("--out", type=Path, default=None, help="output directory")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from esmkernels.benchmarks import environment, runner
    from esmkernels.jobs.threads import set_threads

    device = torch.device(args.device) if args.device else environment.default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here")
    bad = [p for p in args.compare if p not in runner.PROVIDERS]
    if bad or not args.compare:
        raise UsageError(f"--compare {bad or args.compare}: choose from {runner.PROVIDERS}")
    if args.max_time <= 0:
        raise UsageError(f"--max-time {args.max_time} must be > 0")
    suites = runner.SUITES if args.suite == "all" else (args.suite,)
    if args.cases and len(suites) > 1:
        raise UsageError("--cases needs a single --suite")
    size = args.size if args.size != "auto" else runner.default_size(device)
    try:
        for suite in suites:
            runner.check_arguments(suite, args.compare, args.cases, args.modes, size)
    except ValueError as e:
        raise UsageError(str(e)) from None

    set_threads(args.threads)
    arguments = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    arguments.pop("func", None)
    result = runner.run_benchmarks(
        suites,
        out=args.out or environment.results_dir(device=device),
        device=device,
        providers=args.compare,
        size=size,
        dtype=args.dtype,
        plot=not args.no_plot,
        arguments=arguments,
        lengths=args.lengths,
        cases=args.cases,
        modes=args.modes,
        max_time=args.max_time,
        num_recycles=args.num_recycles,
        chunk_size=args.chunk_size,
    )
    print("\n".join(result.lines(args.compare)))
    return EXIT_FAILED if result.failed else EXIT_OK
