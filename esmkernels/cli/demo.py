"""`esmkernels demo` (`make demo`): embed, fold and score real proteins, offline, in a minute.

Nothing is downloaded. The demo writes two small checkpoints in real HF format (config.json,
model.safetensors, vocab.txt) with RANDOM weights generated from a fixed seed: an ESM-2-style
language model and an ESMFold-style folding model. With them it runs the real commands on
`examples/demo.fasta` (ubiquitin, protein G B1, villin HP35, Trp-cage, and insulin's A:B
dimer):

  embed   the chains -> DIR/embeddings (store; read it with esmkernels.open_embeddings)
  fold    every record -> DIR/structures (PDB, PAE JSON, summary.tsv)
  score   ubiquitin mutations (I44A, L8A, K48R, F4A:I44A) -> DIR/scores.csv

then checks the fast models against the plain-PyTorch reference on the same inputs (largest
difference) and times both (speed ratio), and prints the commands to rerun with real weights.
Random weights make every number meaningless as biology; the demo shows that the pipeline
runs, where the outputs go, and that the fast path agrees with the reference. The checkpoints
and the comparison are `esmkernels.jobs.demo`'s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from esmkernels.cli._common import EXIT_OK, UsageError, check_output_dir, command_parser, log

EXAMPLE = """
esmkernels demo --out demo_out/
make demo
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "demo",
        "embed, fold and score a demo FASTA with small random-weight checkpoints (offline)",
        EXAMPLE,
        __doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--out", "-o", default="demo_out", help="output directory (default demo_out)")
    p.add_argument("--fasta", default=None, help="input FASTA (default: examples/demo.fasta)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when present)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from esmkernels.cli import main
    from esmkernels.jobs.demo import (
        MUTATIONS,
        SEED,
        compare_fold,
        compare_lm,
        demo_fasta,
        make_checkpoints,
        pick_mutations,
    )
    from esmkernels.jobs.fasta import read_records, write_fasta

    out = check_output_dir(args.out)
    source = Path(args.fasta) if args.fasta else demo_fasta()
    try:  # the input is checked before anything is written
        records, _ = read_records(source, multimer=True, warn=log)
    except ValueError as err:
        raise UsageError(f"--fasta {err}") from None
    wild_type = records[0].sequence.split(":")[0]
    mutations = MUTATIONS if args.fasta is None else pick_mutations(wild_type)
    quiet = ["--quiet"] if args.quiet else []
    device = ["--device", args.device] if args.device else []
    started = time.perf_counter()
    banner = "RANDOM WEIGHTS: every score, embedding and structure below is meaningless as biology"
    print("=" * len(banner))
    print(banner)
    print("=" * len(banner))
    out.mkdir(parents=True, exist_ok=True)
    lm_dir, fold_dir = make_checkpoints(out / "checkpoints")
    print(f"checkpoints (HF format, random weights, seed {SEED}):\n  {lm_dir}\n  {fold_dir}")

    chains = []
    for r in records:
        parts = r.sequence.split(":")
        for c, chain in enumerate(parts):
            chains.append((r.id if len(parts) == 1 else f"{r.id}_chain{'ABCDEFGH'[c]}", chain))
    chain_fasta = out / "demo_chains.fasta"
    write_fasta(chains, chain_fasta)

    log(f"\n[1/3] embed {len(chains)} chains")
    codes = {}
    codes["embed"] = main(
        ["embed", str(chain_fasta), "--model", str(lm_dir), "--out", str(out / "embeddings")]
        + ["--include", "mean", "per_tok", "contacts", *quiet, *device]
    )
    log(f"\n[2/3] fold {len(records)} records ({source.name})")
    codes["fold"] = main(
        ["fold", str(source), "--model", str(fold_dir), "--out", str(out / "structures")]
        + ["--pae", "--num-recycles", "1", *quiet, *device]
    )
    if mutations is None:
        log(f"\n[3/3] score: skipped ({records[0].id} has no standard residue to mutate)")
    else:
        log(f"\n[3/3] score {mutations} of {records[0].id}")
        codes["score"] = main(
            ["score", "--model", str(lm_dir), "--sequence", wild_type, "--mutations", mutations]
            + ["--out", str(out / "scores.csv"), *device]
        )

    dev = torch.device(args.device) if args.device else None
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm_diff, lm_ref, lm_fast = compare_lm(lm_dir, [s for _, s in chains], dev)
    pos_diff, plddt_diff, fold_ref, fold_fast = compare_fold(fold_dir, records[0].sequence, dev)

    print("\noutputs")
    print(
        f"  embeddings  {out / 'embeddings'}  (esmkernels.open_embeddings('{out / 'embeddings'}'))"
    )
    print(f"  structures  {out / 'structures'}  (PDB + PAE JSON per record, summary.tsv)")
    if mutations is not None:
        print(f"  scores      {out / 'scores.csv'}")
    print(f"\nfast vs reference (same checkpoint, same inputs, on {dev})")
    print(f"  language model: largest |difference| of the final hidden states {lm_diff:.2e}")
    print(f"  ESMFold: largest atom position difference {pos_diff:.2e} A, pLDDT {plddt_diff:.2e}")
    print("speed (this machine, these tiny random models; best of a few runs)")
    print(
        f"  language model: reference {lm_ref * 1e3:.1f} ms, fast {lm_fast * 1e3:.1f} ms, "
        f"{lm_ref / lm_fast:.2f}x"
    )
    print(
        f"  ESMFold: reference {fold_ref * 1e3:.0f} ms, fast {fold_fast * 1e3:.0f} ms, "
        f"{fold_ref / fold_fast:.2f}x"
    )
    if dev.type != "cuda":
        print(
            "  (on a CPU both run PyTorch code; the Triton kernels need a CUDA GPU, so this ratio"
        )
        print("   says nothing about GPU speed: see `make bench` on a GPU)")
    print("\nrerun with real weights (downloaded from the Hugging Face Hub, or a local directory):")
    print(f"  esmkernels embed {chain_fasta} --model facebook/esm2_t33_650M_UR50D --out emb/")
    print(f"  esmkernels fold {source} --model facebook/esmfold_v1 --out structures/ --pae")
    print(f"  esmkernels score --model facebook/esm1v_t33_650M_UR90S_1 --sequence {wild_type} \\")
    print(f"      --mutations {mutations or MUTATIONS}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s; {banner.split(':')[0].lower()}.")
    failed = [name for name, code in codes.items() if code != EXIT_OK]
    if failed:
        log(f"demo: {', '.join(failed)} did not finish cleanly (exit codes {codes})")
        return max(codes.values())
    return EXIT_OK


__all__ = ["add_parser", "run"]
