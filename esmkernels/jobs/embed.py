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
(out of memory, too long) is listed in the index with its reason, and the job goes on. What
would fail every record (the backend cannot run here, a head size the kernels do not take) is
found by `preflight` on a made-up input before anything is written.

Healing: a rerun retries the records the index lists as failed (`retry_failed`). Each is
recomputed in its planned batch, together with that batch's other records (which the failure
had made run apart from it), and the shard is rewritten with the other records' numbers read
back from it; so once the cause is fixed the store is byte-identical to an uninterrupted run's,
and records of batches without a failure are never recomputed.

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
PROBE = "MKTAYIAKQR"  # the made-up sequence of `preflight`
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
        retry_failed: recompute the records the index lists as failed (not those failed for
            their input: invalid, or too long under "error"), each in its planned batch, whose
            other records are recomputed with it; records of other batches are never
            recomputed. False: failed records stay failed.

    Nothing is written until `run` (the store directory is created then): `preflight` can
    stop a job that cannot work before it touches `out`.

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
        retry_failed: bool = True,
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
        self.retry_failed = retry_failed
        # Per shard, the records this run computes (none: the shard is done).
        self._redo = {s: r for s in range(len(self.shards)) if (r := self._records_to_compute(s))}

    @property
    def index_path(self) -> Path:
        return self.writer.index_path

    @property
    def total(self) -> int:
        """Residues of the part's records (the progress bar's total)."""
        return sum(len(self.records[i][1]) for s in self.shards for i in s)

    @property
    def initial(self) -> int:
        """Residues of the records this run does not compute (done before it)."""
        return self.total - sum(len(self.records[i][1]) for r in self._redo.values() for i in r)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(id, reason) of the part's failed records."""
        entries = self.writer.records.values()
        return [(e["id"], e["reason"]) for e in entries if e["status"] != "done"]

    @property
    def retrying(self) -> int:
        """Failed records of the part this run retries (their batches are recomputed)."""
        return sum(len(r & self._retry_failed_in(s)) for s, r in self._redo.items())

    def preflight(self, model, tokenizer, device) -> None:
        """Run the model once on a short made-up batch with the job's options (layers, pools),
        writing nothing: what fails here (a backend that cannot run on this device, a head size
        the kernels do not take, a model that does not fit) would fail every record, so the
        caller stops before any work instead of recording it as each record's failure."""
        self.model, self.tokenizer, self.device = model, tokenizer, device
        n = 8 if self.limit is None else min(8, self.limit)
        probe = [(-1, 0, n, PROBE[:n]), (-2, 0, max(n // 2, 1), PROBE[: max(n // 2, 1)])]
        self.keep_tokens = {-1, -2}
        self._forward(probe)

    def run(self, model, tokenizer, device, progress: Callable[[int], object] | None = None):
        """Compute and write every shard the index does not list, and with `retry_failed` the
        batches of its failed records; `progress(residues)` after each shard."""
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.writer.prepare()
        for s, shard in enumerate(self.shards):
            redo = self._redo.get(s)
            if not redo:
                continue
            recs = [(i, *self.records[i]) for i in shard]
            if redo == set(shard):
                entries, tensors = self._shard(recs)
            else:
                entries, tensors = self._heal(s, recs, redo)
            self.writer.write_shard(s, entries, tensors)
            if progress is not None:
                progress(sum(len(self.records[i][1]) for i in redo))

    # -- planning ----------------------------------------------------------------------------

    def _plan(self, recs) -> tuple[dict[int, dict], list[tuple[int, int, int, str]]]:
        """Index entries (without results) and segments (order, start, end, residues) of a
        shard's records; a record invalid or too long under "error" gets its failed status."""
        limit, long_mode = self.limit, self.long_sequences
        entries: dict[int, dict] = {}
        segments: list[tuple[int, int, int, str]] = []
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
        # Segments in (record, start) order so that equal lengths keep that order.
        segments.sort(key=lambda s: (s[0], s[1]))
        counts: dict[int, int] = {}
        for order, *_ in segments:
            counts[order] = counts.get(order, 0) + 1
        # Per-residue outputs are kept only when asked for, or to merge a record's windows.
        self.keep_tokens = {o for o, n in counts.items() if n > 1 or "per_tok" in self.include}
        return entries, segments

    def _segment_batches(self, segments) -> list[list[tuple[int, int, int, str]]]:
        """Padded batches of segments within max_tokens, counting <cls> and <eos>."""
        lengths = [end - start + 2 for _, start, end, _ in segments]
        return [[segments[i] for i in b] for b in token_batches(lengths, self.max_tokens)]

    def _retry_failed_in(self, s: int) -> set[int]:
        """Records of shard s the index lists as failed at work (not for their input)."""
        if not self.retry_failed:
            return set()
        stored = self.writer.records
        shard = self.shards[s]
        if not all(i in stored for i in shard):
            return set()
        entries, _ = self._plan([(i, *self.records[i]) for i in shard])
        return {i for i in shard if stored[i]["status"] != "done" and "status" not in entries[i]}

    def _records_to_compute(self, s: int) -> set[int]:
        """Shard s's records this run computes: all of a shard the index does not list; else
        the failed ones (with `retry_failed`) plus every record that shares a planned batch
        with them, so that each is computed with the companions an uninterrupted run gives it
        (those companions were computed apart from them after the failure)."""
        shard = self.shards[s]
        if not all(i in self.writer.records for i in shard):
            return set(shard)
        redo = self._retry_failed_in(s)
        if not redo:
            return set()
        _, segments = self._plan([(i, *self.records[i]) for i in shard])
        batches = [{seg[0] for seg in b} for b in self._segment_batches(segments)]
        grown = True
        while grown:  # a windowed record spans batches: close over shared batches
            grown = False
            for members in batches:
                if members & redo and not members <= redo:
                    redo |= members
                    grown = True
        return redo

    # -- computing ---------------------------------------------------------------------------

    def _shard(self, recs) -> tuple[list[dict], dict[str, Any]]:
        """One shard's index entries and tensors, every record computed: batches of segments,
        a failing batch split in halves, a record failing alone recorded as failed, windows
        averaged."""
        entries, segments = self._plan(recs)
        results, errors = self._compute(self._segment_batches(segments))
        outputs = {
            o: _assemble(
                sorted(parts, key=lambda p: p[0]), entries[o]["stored_length"], self.layers
            )
            for o, parts in results.items()
            if o not in errors
        }
        return self._pack(recs, entries, outputs, errors)

    def _heal(self, s: int, recs, redo: set[int]) -> tuple[list[dict], dict[str, Any]]:
        """Shard s rewritten with the planned batches holding a record of `redo` recomputed;
        the other records' numbers are read back from the shard file, not recomputed."""
        entries, segments = self._plan(recs)
        batches = [b for b in self._segment_batches(segments) if any(seg[0] in redo for seg in b)]
        results, errors = self._compute(batches)
        outputs = {
            o: _assemble(
                sorted(parts, key=lambda p: p[0]), entries[o]["stored_length"], self.layers
            )
            for o, parts in results.items()
            if o not in errors
        }
        outputs.update(self._read_back([o for o, *_ in recs if o not in redo], entries))
        return self._pack(recs, entries, outputs, errors)

    def _read_back(self, orders: list[int], entries: dict[int, dict]) -> dict[int, dict]:
        """Stored outputs of done records, in the form `_assemble` gives; a stored failure
        (not retried) is copied into the entry."""
        from safetensors import safe_open

        out: dict[int, dict] = {}
        stored = self.writer.records
        for o in orders:
            old = stored[o]
            if old["status"] != "done":
                if "status" not in entries[o]:
                    entries[o].pop("stored_length", None)
                    entries[o].pop("windows", None)
                    entries[o].update(status=old["status"], reason=old.get("reason", ""))
                continue
            row, start, n = old["row"], old["token_offset"], old["stored_length"]
            with safe_open(self.writer.directory / old["shard"], framework="pt") as f:
                rec: dict[str, Any] = {"mean": {}, "bos": {}, "per_tok": {}, "contacts": None}
                for layer in self.layers:
                    for pool in ("mean", "bos"):
                        if pool in self.include:
                            rec[pool][layer] = f.get_slice(f"{pool}.{layer}")[row : row + 1][0]
                    if "per_tok" in self.include:
                        rec["per_tok"][layer] = f.get_slice(f"per_tok.{layer}")[start : start + n]
                if "contacts" in self.include:
                    rec["contacts"] = f.get_tensor(f"contacts.{row}")
            out[o] = rec
        return out

    def _compute(self, batches) -> tuple[dict[int, list[tuple[int, dict]]], dict[int, str]]:
        """Run `batches` of segments: ({order: [(start, outputs)]}, {order: failure reason}).
        A batch that fails is split in halves and retried; a segment failing alone fails its
        record (its other segments are then skipped)."""
        results: dict[int, list[tuple[int, dict]]] = {}
        errors: dict[int, str] = {}
        queue = [list(b) for b in batches]
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
        return results, errors

    def _pack(self, recs, entries, outputs, errors) -> tuple[list[dict], dict[str, Any]]:
        """The shard's entries (rows numbered in input order) and stacked tensors."""
        import torch

        tensors: dict[str, torch.Tensor] = {}
        rows: dict[str, list[torch.Tensor]] = {}
        row = offset = 0
        for order, *_ in recs:
            entry = entries[order]
            if "status" in entry:
                continue
            if order in errors or order not in outputs:
                entry.pop("stored_length", None)
                entry.pop("windows", None)
                entry.update(status="failed", reason=errors.get(order, "not computed"))
                continue
            rec = outputs[order]
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
