"""The `esmkernels` command line.

    esmkernels info
    esmkernels embed CHECKPOINT seqs.fasta -o embeddings.safetensors [--pool mean|cls] [--layer -1]
    esmkernels fold CHECKPOINT seqs.fasta -o pdb_dir/ [--num-recycles N] [--chunk-size N]
    esmkernels score CHECKPOINT --sequence MKT... --mutations A42G,K45R [--method masked-marginals]

CHECKPOINT is anything `from_pretrained` takes: an HF checkpoint directory, a fair-esm `.pt` file,
or a hub id (downloaded only when huggingface_hub is installed). Long work shows a progress bar.
Nothing computed is lost: `embed` writes `OUT.partial.safetensors` if it stops early, and `fold`
writes each PDB as it finishes (and skips finished ones when run again).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _device(name: str | None):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tokenizer_for(checkpoint: str):
    from esmkernels.tokenization import EsmTokenizer

    path = Path(checkpoint)
    if path.is_dir() and (path / "vocab.txt").exists():
        return EsmTokenizer.from_pretrained(path)
    return EsmTokenizer()


def _records(fasta: str) -> list[tuple[str, str]]:
    from esmkernels.fasta import read_fasta

    records = read_fasta(fasta)
    if not records:
        raise ValueError(f"{fasta}: no sequences found")
    ids = [header.split()[0] if header.split() else "" for header, _ in records]
    seen: set[str] = set()
    for i, rid in enumerate(ids):
        if not rid:
            raise ValueError(f"{fasta}: record {i} has an empty header")
        if rid in seen:
            raise ValueError(f"{fasta}: duplicate record id {rid!r}")
        seen.add(rid)
    return [(rid, seq) for rid, (_, seq) in zip(ids, records)]


def _atomic_save_safetensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _batches(records: list[tuple[str, str]], max_tokens: int) -> list[list[tuple[str, str]]]:
    """Length-sorted batches whose padded size (B x longest) stays within max_tokens."""
    order = sorted(records, key=lambda r: len(r[1]), reverse=True)
    batches: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for rec in order:
        longest = len(current[0][1]) + 2 if current else len(rec[1]) + 2
        if current and longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(rec)
    if current:
        batches.append(current)
    return batches


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from esmkernels import __version__
    from esmkernels.ops._dispatch import default_backend, triton_available

    print(f"esmkernels {__version__}")
    print(f"torch {torch.__version__}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except Exception:
        print("triton: not installed")
    print(f"backend (ESMKERNELS_BACKEND): {default_backend()}")
    print(f"triton available: {triton_available()}")
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name(0)}")
    else:
        print("cuda: not available (models use the PyTorch path)")
    return 0


def _embed_batch(model, tokenizer, batch, device, layer: int, pool: str):
    import torch

    enc = tokenizer([s for _, s in batch], padding=True, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    mask = enc["attention_mask"].to(device)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=layer != -1)
    hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
    result = {}
    for row, (rid, seq) in enumerate(batch):
        residues = hidden[row, 1 : len(seq) + 1].float()  # drop <cls> and <eos>
        if pool == "mean":
            result[rid] = residues.mean(0).cpu()
        elif pool == "cls":
            result[rid] = hidden[row, 0].float().cpu()
        else:
            result[rid] = residues.cpu()
    return result


def cmd_embed(args: argparse.Namespace) -> int:
    import torch

    from esmkernels import EsmModel
    from esmkernels.progress import Progress

    out_path = Path(args.output)
    if out_path.exists() and not args.overwrite:
        raise ValueError(f"{out_path} exists; pass --overwrite to replace it")
    records = _records(args.fasta)
    device = _device(args.device)
    model = EsmModel.from_pretrained(
        args.checkpoint, dtype=args.dtype, device=device, backend=args.backend
    )
    tokenizer = _tokenizer_for(args.checkpoint)
    cfg = model.config
    if cfg.position_embedding_type == "absolute":
        # positions run padding_idx+1 .. padding_idx+tokens; two tokens are <cls> and <eos>
        pad = 1 if cfg.pad_token_id is None else cfg.pad_token_id
        limit = cfg.max_position_embeddings - pad - 1 - 2
        too_long = [(rid, len(s)) for rid, s in records if len(s) > limit]
        if too_long:
            listed = ", ".join(f"{rid} ({n})" for rid, n in too_long[:10])
            raise ValueError(
                f"{len(too_long)} sequence(s) are longer than this absolute-position model allows "
                f"({limit} residues): {listed}"
            )
    results: dict[str, torch.Tensor] = {}
    queue = _batches(records, args.max_tokens)
    try:
        with Progress(len(records), "embed", unit="seq", enabled=not args.quiet) as bar:
            while queue:
                batch = queue.pop(0)
                try:
                    results.update(
                        _embed_batch(model, tokenizer, batch, device, args.layer, args.pool)
                    )
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    if len(batch) == 1:
                        rid, seq = batch[0]
                        raise MemoryError(
                            f"out of GPU memory on {rid} ({len(seq)} residues) even alone; "
                            "use a smaller --dtype (bf16) or a larger GPU"
                        ) from None
                    half = len(batch) // 2
                    queue[:0] = [batch[:half], batch[half:]]
                    continue
                bar.update(len(batch))
    except BaseException:
        if results:
            partial = out_path.with_name(out_path.stem + ".partial.safetensors")
            _atomic_save_safetensors(results, partial)
            print(f"stopped early; {len(results)} embeddings saved to {partial}", file=sys.stderr)
        raise
    _atomic_save_safetensors(results, out_path)
    print(f"wrote {len(results)} embeddings to {out_path}", file=sys.stderr)
    return 0


def cmd_fold(args: argparse.Namespace) -> int:
    import torch

    from esmkernels import EsmForProteinFolding
    from esmkernels.progress import Progress

    records = _records(args.fasta)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(args.device)
    model = EsmForProteinFolding.from_pretrained(args.checkpoint, device=device)
    if args.chunk_size:
        model.set_chunk_size(args.chunk_size)
    todo = [
        (rid, s) for rid, s in records if args.overwrite or not (out_dir / f"{rid}.pdb").exists()
    ]
    if len(todo) < len(records):
        print(f"skipping {len(records) - len(todo)} already folded", file=sys.stderr)
    failures: list[str] = []
    with Progress(len(todo), "fold", unit="seq", enabled=not args.quiet) as bar:
        for rid, seq in todo:
            chunk = args.chunk_size
            while True:
                try:
                    with torch.inference_mode():
                        pdb = model.infer_pdb(seq, num_recycles=args.num_recycles)
                    break
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    chunk = 64 if not chunk else chunk // 2
                    if chunk < 4:
                        failures.append(f"{rid} ({len(seq)} residues): out of GPU memory")
                        pdb = None
                        break
                    model.set_chunk_size(chunk)
                except ValueError as err:
                    failures.append(f"{rid}: {err}")
                    pdb = None
                    break
            if pdb is not None:
                target = out_dir / f"{rid}.pdb"
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_text(pdb)
                os.replace(tmp, target)
            bar.update()
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failures else 0


def cmd_score(args: argparse.Namespace) -> int:
    from esmkernels import EsmForMaskedLM

    device = _device(args.device)
    model = EsmForMaskedLM.from_pretrained(args.checkpoint, dtype=args.dtype, device=device)
    mutations = [m for m in args.mutations.replace(";", ",").split(",") if m.strip()]
    scores = model.score_variants(
        args.sequence, mutations, method=args.method, tokenizer=_tokenizer_for(args.checkpoint)
    )
    print("mutation\tscore")
    for mut, score in zip(mutations, scores):
        print(f"{mut.strip()}\t{float(score):.6f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esmkernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("info", help="versions, device and backend")
    p.set_defaults(func=cmd_info)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", help="HF checkpoint directory, fair-esm .pt file or hub id")
        p.add_argument(
            "--device", default=None, help="cuda, cuda:1, cpu (default: cuda if present)"
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("embed", help="per-sequence (or per-residue) embeddings of a FASTA file")
    common(p)
    p.add_argument("fasta")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.add_argument("--pool", choices=("mean", "cls", "none"), default="mean")
    p.add_argument("--layer", type=int, default=-1, help="hidden-state index (-1: final)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    p.add_argument("--backend", default=None, choices=("auto", "triton", "torch"))
    p.add_argument("--max-tokens", type=int, default=8192, help="padded tokens per batch")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("fold", help="ESMFold structures of a FASTA file, one PDB per record")
    common(p)
    p.add_argument("fasta", help="records; multimers written as SEQA:SEQB")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--num-recycles", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None, help="trunk chunk size (memory)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_fold)

    p = sub.add_parser("score", help="score mutations with a masked language model (ESM-1v)")
    common(p)
    p.add_argument("--sequence", required=True, help="wild-type sequence")
    p.add_argument("--mutations", required=True, help="comma-separated, e.g. A42G,K45R:S50T")
    p.add_argument(
        "--method",
        default="masked-marginals",
        choices=("masked-marginals", "wt-marginals", "pseudo-ppl"),
    )
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from esmkernels import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, MemoryError) as err:
        print(f"esmkernels {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
