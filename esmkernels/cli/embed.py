"""`esmkernels embed FASTA --model M --out DIR`: embeddings of every record, resumable.

Output: an embedding store (`esmkernels.jobs.embeddings`): sharded safetensors files plus an index;
read it with `esmkernels.open_embeddings(DIR)`. Options follow fair-esm's `esm-extract`
(`--repr-layers`, `--include mean per_tok bos contacts`, `--truncation-seq-length`,
`--max-tokens-per-batch`).

Long sequences. An absolute-position model (ESM-1b, ESM-1v) takes at most
`max_position_embeddings - 4` residues (1,022); `--truncation-seq-length N` sets a limit for any
model. A record over the limit is handled by `--long-sequences`:
  error     the record fails ("too long"); the rest of the job goes on (default);
  truncate  its first N residues are embedded (`stored_length` in the index says so);
  window    windows of N residues overlapping by half cover it; per-residue outputs are the
            mean over the windows that contain the residue, the BOS output the mean over
            windows, mean pooling the mean of the per-residue outputs, and a contact the mean
            over the windows holding both residues (0 where none does).

Failure isolation: a batch that runs out of memory is split and retried; a record that fails
alone (out of memory, too long, invalid with --skip-invalid) is listed in the index with its
reason and skipped, and the exit code is 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from esmkernels.cli._common import (
    Part,
    UsageError,
    add_input_options,
    add_model_option,
    add_run_options,
    add_scale_options,
    command_parser,
    load_model,
    log,
    output_dir,
    pick_device,
    read_input,
    report_failures,
    tokenizer_for,
)
from esmkernels.core.batching import token_batches
from esmkernels.core.memory import free_memory, is_oom

EXAMPLE = """
esmkernels embed proteins.fasta --model facebook/esm2_t33_650M_UR50D --out emb/ \\
    --repr-layers -1 --include mean per_tok --dtype bfloat16
python -c "import esmkernels; X, ids = esmkernels.open_embeddings('emb/').matrix(-1, 'mean')"
"""

SHARD_BYTES = 1 << 30  # shards close at about 1 GiB of float32 outputs


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "embed",
        "embeddings of every record of a FASTA file (sharded safetensors + index, resumable)",
        EXAMPLE,
        __doc__.split("\n\n", 2)[2],
    )
    p.add_argument("fasta", help="input FASTA (plain or .gz)")
    add_model_option(p, "ESM language model (ESM-2, ESM-1b, ESM-1v)")
    p.add_argument("--out", "-o", required=True, help="output directory (the store)")
    p.add_argument(
        "--repr-layers",
        type=int,
        nargs="+",
        default=[-1],
        metavar="L",
        help="hidden-state layers to save: 0 = embeddings, N = final layer; negative counts "
        "from the end (-1 = final) (default: -1)",
    )
    p.add_argument(
        "--include",
        nargs="+",
        default=["mean"],
        choices=("mean", "per_tok", "bos", "contacts"),
        help="what to save: mean over residues, per-residue (per_tok), the BOS (<cls>) token, "
        "contact maps (default: mean)",
    )
    p.add_argument(
        "--max-tokens-per-batch",
        type=int,
        default=4096,
        metavar="T",
        help="padded tokens per batch (default 4096)",
    )
    p.add_argument(
        "--truncation-seq-length",
        type=int,
        default=None,
        metavar="N",
        help="residue limit per record (default: the model's own limit, none for ESM-2)",
    )
    p.add_argument(
        "--long-sequences",
        choices=("error", "truncate", "window"),
        default="error",
        help="records over the limit: fail them, embed the first N residues, or sliding "
        "windows (default: error)",
    )
    p.add_argument(
        "--records-per-shard",
        type=int,
        default=1000,
        metavar="R",
        help="records per shard file (default 1000; shards also close at ~1 GiB)",
    )
    add_input_options(p)
    add_scale_options(p)
    add_run_options(p)
    return p


def model_limit(config) -> int | None:
    """Residues an absolute-position model takes (positions pad+1 .. pad+tokens; <cls>, <eos>)."""
    if config.position_embedding_type != "absolute":
        return None
    pad = 1 if config.pad_token_id is None else config.pad_token_id
    return config.max_position_embeddings - pad - 1 - 2


def windows(length: int, size: int) -> list[tuple[int, int]]:
    """[start, end) windows of `size` covering [0, length), stepping by size // 2, the last
    one ending at `length`.

    Example:
        >>> windows(10, 4)
        [(0, 4), (2, 6), (4, 8), (6, 10)]
    """
    if length <= size:
        return [(0, length)]
    step = max(size // 2, 1)
    starts = list(range(0, length - size, step)) + [length - size]
    return [(s, s + size) for s in sorted(set(starts))]


def run(args: argparse.Namespace) -> int:
    from esmkernels.jobs.embeddings import EmbeddingWriter
    from esmkernels.jobs.files import input_sha256, plan_shards, sequence_sha256, split_parts
    from esmkernels.jobs.progress import residue_bar
    from esmkernels.models.esm import EsmModel

    for name in ("max_tokens_per_batch", "records_per_shard", "truncation_seq_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be >= 1")
    records, rejected = read_input(args.fasta, multimer=False, skip_invalid=args.skip_invalid)
    part = Part(args.shard)
    out = output_dir(args.out)
    device = pick_device(args.device, part)
    model = load_model(
        EsmModel,
        args.model,
        "lm",
        "embed",
        dtype=args.dtype,
        device=device,
        backend=args.backend,
    )
    tokenizer = tokenizer_for(args.model)
    config = model.config
    n_layers = config.num_hidden_layers
    layers = []
    for layer in args.repr_layers:
        if not -(n_layers + 1) <= layer <= n_layers:
            raise UsageError(
                f"--repr-layers {layer}: this model has layers 0..{n_layers} (or -1..-{n_layers + 1})"
            )
        layers.append(layer % (n_layers + 1))
    layers = sorted(set(layers))
    include = [p for p in ("mean", "per_tok", "bos", "contacts") if p in args.include]
    limit = model_limit(config)
    if args.truncation_seq_length is not None:
        limit = min(limit or args.truncation_seq_length, args.truncation_seq_length)
    if args.long_sequences == "window" and limit is None:
        raise UsageError("--long-sequences window needs a limit: pass --truncation-seq-length")

    items: dict[int, tuple[str, str, str | None]] = {}
    for r in records:
        items[r.order] = (r.id, r.sequence, None)
    for r in rejected:
        items[r.order] = (r.id, r.sequence, r.reason)
    everything = [items[i] for i in sorted(items)]
    settings = {
        "model": args.model,
        "layers": layers,
        "include": include,
        "dtype": args.dtype,
        "backend": args.backend or "auto",
        "limit": limit,
        "long_sequences": args.long_sequences,
        "max_tokens_per_batch": args.max_tokens_per_batch,
        "records_per_shard": args.records_per_shard,
        "records": len(everything),
        "input_sha256": input_sha256([(rid, seq) for rid, seq, _ in everything]),
    }
    try:
        writer = EmbeddingWriter(out, settings, part.index, part.count)
    except ValueError as err:
        raise UsageError(str(err)) from None

    orders = sorted(items)
    share = [
        orders[i] for i in split_parts([len(items[o][1]) for o in orders], part.count)[part.index]
    ]
    width = config.hidden_size

    def stored(length: int) -> int:
        return length if limit is None or args.long_sequences == "window" else min(length, limit)

    def bytes_of(length: int) -> int:
        n = stored(length)
        per_layer = width * (("mean" in include) + ("bos" in include) + n * ("per_tok" in include))
        return 4 * (len(layers) * per_layer + n * n * ("contacts" in include))

    shards = plan_shards(
        {o: len(items[o][1]) for o in share}, args.records_per_shard, SHARD_BYTES, bytes_of
    )
    part.start(device)
    total = sum(len(items[o][1]) for o in share)
    initial = sum(len(items[o][1]) for s in shards if writer.finished(s) for o in s)
    label = "embed" + (f" {part.tag}" if part.tag else "")
    runner = _Runner(model, tokenizer, device, layers, include, args.max_tokens_per_batch)
    with residue_bar(total, label, initial=initial, enabled=not args.quiet) as bar:
        for s, shard in enumerate(shards):
            if writer.finished(shard):
                continue
            entries, tensors = runner.shard(
                [(o, *items[o]) for o in shard], limit, args.long_sequences, sequence_sha256
            )
            writer.write_shard(s, entries, tensors)
            bar.update(sum(len(items[o][1]) for o in shard))
    failed = [(e["id"], e["reason"]) for e in writer.records.values() if e["status"] != "done"]
    done = len(writer.records) - len(failed)
    log(f"embedded {done} record(s) into {out} ({writer.index_path.name}, on {device})")
    part.finish()
    return report_failures(failed, str(writer.index_path))


class _Runner:
    """Runs one shard: batches of segments, OOM splitting, assembly of each record's outputs."""

    def __init__(self, model, tokenizer, device, layers, include, max_tokens: int):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.layers, self.include, self.max_tokens = layers, include, max_tokens
        self.keep_tokens: set[int] = set()  # records whose per-residue outputs are kept

    def shard(self, recs, limit, long_mode, checksum) -> tuple[list[dict], dict[str, Any]]:
        import torch

        entries: dict[int, dict] = {}
        segments: list[tuple[int, int, int, str]] = []  # (order, start, end, residues)
        for order, rid, seq, reason in recs:
            entry = {"id": rid, "order": order, "length": len(seq), "sha256": checksum(seq)}
            entries[order] = entry
            if reason is None and limit is not None and len(seq) > limit:
                if long_mode == "error":
                    reason = (
                        f"too long: {len(seq)} residues, the limit is {limit} "
                        "(--long-sequences truncate|window to embed it)"
                    )
                elif long_mode == "truncate":
                    segments.append((order, 0, limit, seq[:limit]))
                    entry["stored_length"] = limit
                    continue
                else:
                    for a, b in windows(len(seq), limit):
                        segments.append((order, a, b, seq[a:b]))
                    entry["stored_length"] = len(seq)
                    entry["windows"] = len(windows(len(seq), limit))
                    continue
            if reason is not None:
                entry.update(status="failed", reason=reason)
                continue
            segments.append((order, 0, len(seq), seq))
            entry["stored_length"] = len(seq)

        counts: dict[int, int] = {}
        for order, *_ in segments:
            counts[order] = counts.get(order, 0) + 1
        # Per-residue outputs are kept only when asked for, or to merge a record's windows.
        self.keep_tokens = {o for o, n in counts.items() if n > 1 or "per_tok" in self.include}
        results: dict[int, list[tuple[int, dict]]] = {}
        errors: dict[int, str] = {}
        # Padded batches within max_tokens, counting <cls> and <eos>; segments in (record, start)
        # order so that equal lengths keep that order.
        segments.sort(key=lambda s: (s[0], s[1]))
        lengths = [end - start + 2 for _, start, end, _ in segments]
        queue = [[segments[i] for i in b] for b in token_batches(lengths, self.max_tokens)]
        while queue:
            batch = queue.pop(0)
            batch = [seg for seg in batch if seg[0] not in errors]
            if not batch:
                continue
            try:
                for (order, start), value in self._forward(batch).items():
                    results.setdefault(order, []).append((start, value))
            except (RuntimeError, ValueError) as err:
                free_memory(self.device)
                if len(batch) > 1:
                    half = len(batch) // 2
                    queue[:0] = [batch[:half], batch[half:]]
                    continue
                order, a, b, _ = batch[0]
                if is_oom(err):
                    errors[order] = f"out of memory even alone ({b - a} residues)"
                else:
                    errors[order] = f"{type(err).__name__}: {err}"

        tensors: dict[str, torch.Tensor] = {}
        rows: dict[str, list[torch.Tensor]] = {}
        row = offset = 0
        for order, *_ in recs:
            entry = entries[order]
            if "status" in entry:
                continue
            if order in errors:
                entry.pop("stored_length", None)
                entry.pop("windows", None)
                entry.update(status="failed", reason=errors[order])
                continue
            parts = sorted(results[order], key=lambda p: p[0])
            rec = _assemble(parts, entry["stored_length"], self.layers)
            for layer in self.layers:
                if "mean" in self.include:
                    rows.setdefault(f"mean.{layer}", []).append(rec["mean"][layer])
                if "bos" in self.include:
                    rows.setdefault(f"bos.{layer}", []).append(rec["bos"][layer])
                if "per_tok" in self.include:
                    rows.setdefault(f"per_tok.{layer}", []).append(rec["per_tok"][layer])
            if "contacts" in self.include:
                tensors[f"contacts.{row}"] = rec["contacts"]
            entry.update(status="done", row=row, token_offset=offset)
            row += 1
            offset += entry["stored_length"]
        for key, values in rows.items():
            tensors[key] = torch.cat(values) if key.startswith("per_tok") else torch.stack(values)
        return [entries[o] for o, *_ in recs], tensors

    def _forward(self, batch) -> dict[tuple[int, int], dict]:
        import torch

        enc = self.tokenizer([seg[3] for seg in batch], padding=True, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        final_only = self.layers == [self.model.config.num_hidden_layers]
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, attention_mask=mask, output_hidden_states=not final_only
            )
            contacts = None
            if "contacts" in self.include:
                contacts = self.model.predict_contacts(ids, mask).float().cpu()
            if final_only:  # the final hidden state, after the last LayerNorm, as hidden_states[-1]
                hidden = {self.layers[0]: out.last_hidden_state}
            else:
                hidden = {layer: out.hidden_states[layer] for layer in self.layers}
            result = {}
            for b, (order, start, end, _) in enumerate(batch):
                n = end - start
                tokens = {layer: h[b, 1 : n + 1].float() for layer, h in hidden.items()}
                result[(order, start)] = {
                    "mean": {layer: t.mean(0).cpu() for layer, t in tokens.items()},
                    "per_tok": {layer: t.cpu() for layer, t in tokens.items()}
                    if order in self.keep_tokens
                    else None,
                    "bos": {layer: h[b, 0].float().cpu() for layer, h in hidden.items()},
                    "contacts": None if contacts is None else contacts[b, :n, :n].clone(),
                    "end": end,
                }
        return result


def _assemble(parts: list[tuple[int, dict]], length: int, layers) -> dict:
    """One record's outputs from its segments (one, or overlapping windows: averaged)."""
    import torch

    if len(parts) == 1:
        return parts[0][1]
    count = torch.zeros(length, 1)
    pair = torch.zeros(length, length)
    per_tok = {layer: None for layer in layers}
    bos = {layer: None for layer in layers}
    contacts = None
    for start, seg in parts:
        end = seg["end"]
        count[start:end] += 1
        pair[start:end, start:end] += 1
        for layer in layers:
            h = seg["per_tok"][layer]
            if per_tok[layer] is None:
                per_tok[layer] = torch.zeros(length, h.shape[-1])
                bos[layer] = torch.zeros_like(seg["bos"][layer])
            per_tok[layer][start:end] += h
            bos[layer] += seg["bos"][layer] / len(parts)
        if seg["contacts"] is not None:
            if contacts is None:
                contacts = torch.zeros(length, length)
            contacts[start:end, start:end] += seg["contacts"]
    per_tok = {layer: per_tok[layer] / count for layer in layers}
    return {
        "mean": {layer: t.mean(0) for layer, t in per_tok.items()},
        "per_tok": per_tok,
        "bos": bos,
        "contacts": None if contacts is None else contacts / pair.clamp(min=1),
    }


__all__ = ["add_parser", "model_limit", "run", "windows"]
