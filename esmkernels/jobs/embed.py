"""An embedding job: every record of a FASTA file embedded into an embedding store
(`esmkernels.jobs.embeddings`), resumably. `esmkernels embed` parses and validates its options,
loads the model and runs an `EmbedJob`; the options and the long-sequence modes are described
there (`esmkernels embed --help`).

Plan (a pure function of the input and the settings, decided before any work): the records are
dealt into parts (`esmkernels.jobs.files.split_parts`), a part's records into shards
(`plan_shards`), and a shard's segments (a record, its truncation or its windows) into padded
batches within the token budget (`esmkernels.core.batching.token_batches`, counting <cls> and
<eos>). A rerun computes exactly the shards the index does not list, with the same batches.

Failure isolation: a batch that fails is split in halves and retried; a record that fails alone
(out of memory, too long) is listed in the index with its reason, and the job goes on.

Example:
    >>> job = EmbedJob(out, records, settings, layers=[33], include=["mean"],  # doctest: +SKIP
    ...                limit=None, long_sequences="error", max_tokens=4096, records_per_shard=1000,
    ...                width=1280)
    >>> job.run(model, tokenizer, device)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from esmkernels.core.batching import token_batches
from esmkernels.core.memory import free_memory, is_oom
from esmkernels.jobs.embeddings import EmbeddingWriter
from esmkernels.jobs.files import input_sha256, plan_shards, sequence_sha256, split_parts

SHARD_BYTES = 1 << 30  # shards close at about 1 GiB of float32 outputs
LONG_SEQUENCES = ("error", "truncate", "window")

__all__ = ["LONG_SEQUENCES", "SHARD_BYTES", "EmbedJob", "model_limit", "windows"]


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


class EmbedJob:
    """Part K of N of an embedding job writing the store `out` (created and checked by the
    caller).

    Constructing it opens the part's `EmbeddingWriter` (which checks the settings against the
    store's and removes a killed run's temporary files) and plans the part's shards.

    Args:
        out: the store directory.
        records: (id, sequence, reason) of every record in input order; `reason` is None for a
            valid record, else why it is invalid (recorded as failed).
        settings: what else determines the numbers (model, dtype, backend); the plan's
            parameters and the input checksum are added. A rerun with other settings is refused.
        layers: hidden-state layers to store (0 = embeddings), sorted.
        include: pools to store, of ("mean", "per_tok", "bos", "contacts").
        limit: residues per segment (None: no limit); `long_sequences` says what a longer
            record becomes: "error" (failed), "truncate" (its first `limit` residues), "window"
            (windows of `limit` residues overlapping by half, outputs averaged).
        max_tokens: padded tokens per batch, <cls> and <eos> included.
        records_per_shard: records per shard file (shards also close at `SHARD_BYTES`).
        width: the model's hidden size (for the shard-size estimate).
        part, parts: this job's share K (0-based) of N.

    Raises:
        ValueError: settings differing from the store's, or another split of the job in it.
    """

    def __init__(
        self,
        out: Path,
        records: Sequence[tuple[str, str, str | None]],
        settings: dict[str, Any],
        *,
        layers: list[int],
        include: list[str],
        limit: int | None,
        long_sequences: str,
        max_tokens: int,
        records_per_shard: int,
        width: int,
        part: int = 0,
        parts: int = 1,
    ):
        if long_sequences not in LONG_SEQUENCES:
            raise ValueError(f"long_sequences={long_sequences!r}: expected one of {LONG_SEQUENCES}")
        self.records = list(records)
        self.layers, self.include = layers, include
        self.limit, self.long_sequences, self.max_tokens = limit, long_sequences, max_tokens
        self.writer = EmbeddingWriter(
            out,
            {
                **settings,
                "layers": layers,
                "include": include,
                "limit": limit,
                "long_sequences": long_sequences,
                "max_tokens_per_batch": max_tokens,
                "records_per_shard": records_per_shard,
                "records": len(self.records),
                "input_sha256": input_sha256([(rid, seq) for rid, seq, _ in self.records]),
            },
            part,
            parts,
        )
        share = split_parts([len(seq) for _, seq, _ in self.records], parts)[part]

        def stored(length: int) -> int:
            return length if limit is None or long_sequences == "window" else min(length, limit)

        def bytes_of(length: int) -> int:
            n = stored(length)
            pools = ("mean" in include) + ("bos" in include) + n * ("per_tok" in include)
            return 4 * (len(layers) * width * pools + n * n * ("contacts" in include))

        self.shards = plan_shards(
            {i: len(self.records[i][1]) for i in share}, records_per_shard, SHARD_BYTES, bytes_of
        )
        self.keep_tokens: set[int] = set()  # records whose per-residue outputs are kept

    @property
    def index_path(self) -> Path:
        return self.writer.index_path

    @property
    def total(self) -> int:
        """Residues of the part's records (the progress bar's total)."""
        return sum(len(self.records[i][1]) for s in self.shards for i in s)

    @property
    def initial(self) -> int:
        """Residues of the records in shards finished before this run."""
        return sum(
            len(self.records[i][1]) for s in self.shards if self.writer.finished(s) for i in s
        )

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(id, reason) of the part's failed records."""
        entries = self.writer.records.values()
        return [(e["id"], e["reason"]) for e in entries if e["status"] != "done"]

    def run(self, model, tokenizer, device, progress: Callable[[int], object] | None = None):
        """Compute and write every shard the index does not list; `progress(residues)` after
        each shard."""
        self.model, self.tokenizer, self.device = model, tokenizer, device
        for s, shard in enumerate(self.shards):
            if self.writer.finished(shard):
                continue
            entries, tensors = self._shard([(i, *self.records[i]) for i in shard])
            self.writer.write_shard(s, entries, tensors)
            if progress is not None:
                progress(sum(len(self.records[i][1]) for i in shard))

    def _shard(self, recs) -> tuple[list[dict], dict[str, Any]]:
        """One shard's index entries and tensors: batches of segments, a failing batch split
        in halves, a record failing alone recorded as failed, windows averaged."""
        import torch

        limit, long_mode = self.limit, self.long_sequences
        entries: dict[int, dict] = {}
        segments: list[tuple[int, int, int, str]] = []  # (order, start, end, residues)
        for order, rid, seq, reason in recs:
            entry = {"id": rid, "order": order, "length": len(seq), "sha256": sequence_sha256(seq)}
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
