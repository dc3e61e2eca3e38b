"""ESMFold inference: sequences in, structures out.

`FoldingInference` is the part of `EsmForProteinFolding` that takes one-letter sequences
(`infer`, `infer_records`, `infer_pdb`, `infer_pdbs`, `output_to_pdb`); `encode_sequences` turns
sequences, multimers included, into the model's padded inputs. The fast model
(`esmkernels.models.esmfold`) inherits all of it.

Multimers: chains split by ':' are joined by `chain_linker` (default 25 glycines, as ESMFold)
and their residue indices jump by `residue_index_offset` (default 512); the linker's atoms are
then marked absent, so outputs and PDB files hold the chains only.

Out of memory. A sequence folded alone that runs out of memory (`esmkernels.core.memory.is_oom`)
is retried after `free_memory`, at half the rows per block of the attempt that failed (the
trunk's chunk size, or L when it ran unchunked), halving again down to `MIN_CHUNK_SIZE`; then
`torch.OutOfMemoryError` names L and every chunk size tried. The chunk-size setting is restored
afterwards. A `MemoryError` (the fast model's memory model refusing, before any work, a fold
that no chunk size fits) is not retried. A padded batch of several sequences is not retried at
smaller chunks; with `max_tokens_per_batch` (and in `infer_records`) it is split and each of its
sequences folded alone, with that retry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from esmkernels.core.batching import token_batches
from esmkernels.core.memory import free_memory, is_oom
from esmkernels.reference.esmfold import pdb
from esmkernels.reference.esmfold import residue_constants as rc

if TYPE_CHECKING:
    from esmkernels.reference.esmfold.modeling import EsmForProteinFoldingOutput

DEFAULT_LINKER = "G" * 25
DEFAULT_RESIDUE_INDEX_OFFSET = 512
# Smallest trunk chunk size the out-of-memory retry tries.
MIN_CHUNK_SIZE = 4
# `infer(outputs=None)` returns lean outputs (no s_z, distogram, pTM logits or aligned-error
# probabilities) for batches longer than this many positions. Up to here the full heads cost at
# most 1.5 pair tensors more (about 0.4 GiB in bf16 at 1,024) and a caller may use them; beyond
# it they dominate the fold's peak (2.5 of about 3.5 pair tensors at 10,000 residues).
LEAN_OUTPUTS_ABOVE = 1024

__all__ = [
    "DEFAULT_LINKER",
    "DEFAULT_RESIDUE_INDEX_OFFSET",
    "LEAN_OUTPUTS_ABOVE",
    "MIN_CHUNK_SIZE",
    "FoldedRecord",
    "FoldingInference",
    "encode_sequences",
    "retry_chunk_sizes",
]


@dataclass
class FoldedRecord:
    """One sequence's result from `infer_records`.

    Attributes:
        output: its `EsmForProteinFoldingOutput` (batch 1, cut to its length, linkers
            included), or None when it failed.
        error: the exception that stopped it, folded alone and retried (None when done).
        chunk_size: the trunk chunk size its fold ran with (None: unchunked or failed).
        seconds: its share (by length) of the measured time of the batch that folded it.
    """

    output: EsmForProteinFoldingOutput | None
    error: Exception | None
    chunk_size: int | None
    seconds: float


class FoldingInference:
    """Sequence-level inference of `EsmForProteinFolding` (a mixin: it uses the model's
    `forward`, `device`, `trunk`, `chunk_size`, `set_chunk_size` and `last_chunk_size`)."""

    @torch.no_grad()
    def infer(
        self,
        sequences: str | Sequence[str],
        position_ids: torch.Tensor | Sequence[Sequence[int]] | None = None,
        residue_index_offset: int | None = DEFAULT_RESIDUE_INDEX_OFFSET,
        chain_linker: str | None = DEFAULT_LINKER,
        num_recycles: int | None = None,
        masking_pattern: torch.Tensor | None = None,
        max_tokens_per_batch: int | None = None,
        outputs: str | None = None,
    ) -> EsmForProteinFoldingOutput | list[EsmForProteinFoldingOutput]:
        """Fold one-letter sequences; chains of a multimer are separated by ':'.

        Chains are joined by `chain_linker` (default 25 glycines) and their residue indices
        jump by `residue_index_offset` (default 512); the linker is then hidden: its atoms are
        marked absent (`atom14_atom_exists`, `atom37_atom_exists`), so PDB output omits it.
        A single sequence that runs out of memory is retried at smaller chunk sizes (see the
        module docstring).

        Args:
            sequences: a sequence or a list of them (uppercase one-letter codes; B, J, O, U, X,
                Z are read as unknown, X).
            position_ids: [L] or [B, L] residue indices replacing the computed ones.
            residue_index_offset, chain_linker: multimer handling, as described.
            num_recycles: see `forward`.
            masking_pattern: [B, L], 1 = mask that residue.
            max_tokens_per_batch: fold in several padded batches instead of one, packed by
                `esmkernels.core.batching.token_batches` (longest first, while sequences x
                longest length, linkers included, stays within this many tokens; a longer
                sequence is folded alone). A batch that runs out of memory is split into its
                sequences. Not combinable with `position_ids` or `masking_pattern`.
            outputs: "full", "lean" (see `forward`: positions, pLDDT, pTM and PAE, without the
                [L, L, C] tensors) or None (default): lean when the padded batch is longer
                than `LEAN_OUTPUTS_ABOVE` (1,024) positions, linkers included, else full.

        Returns:
            `EsmForProteinFoldingOutput` with `chain_index` and `mean_plddt` set; with
            `max_tokens_per_batch`, a list of them in input order, one per sequence (batch 1,
            cut to the sequence's own length), each independent of how the batches were packed.

        Raises:
            ValueError: empty input, an empty chain, or an invalid residue letter (named with
                its position), negative num_recycles; all before any work.
            torch.OutOfMemoryError: a sequence alone did not fit even at `MIN_CHUNK_SIZE`.
        """
        if max_tokens_per_batch is not None:
            if position_ids is not None or masking_pattern is not None:
                raise ValueError(
                    "infer: max_tokens_per_batch cannot be combined with position_ids or "
                    "masking_pattern (they are laid out for one padded batch)"
                )
            return self._infer_packed(
                sequences,
                max_tokens_per_batch,
                residue_index_offset=residue_index_offset,
                chain_linker=chain_linker,
                num_recycles=num_recycles,
                outputs=outputs,
            )
        if outputs is not None and outputs not in ("full", "lean"):
            raise ValueError(f"infer: outputs={outputs!r} is not one of ('full', 'lean', None)")
        enc = encode_sequences(sequences, residue_index_offset, chain_linker)
        device = self.device
        aatype, mask = enc["aatype"].to(device), enc["mask"].to(device)
        residx = enc["residue_index"].to(device)
        if position_ids is not None:
            if not torch.is_tensor(position_ids):
                position_ids = _collate(
                    [torch.as_tensor(p, dtype=torch.long) for p in position_ids]
                )
            position_ids = position_ids.to(device)
            if position_ids.dim() == 1:
                position_ids = position_ids.unsqueeze(0)
            if tuple(position_ids.shape) != tuple(aatype.shape):
                raise ValueError(
                    f"position_ids shape {tuple(position_ids.shape)} != encoded batch shape "
                    f"{tuple(aatype.shape)} (linkers included)"
                )
            residx = position_ids
        if masking_pattern is not None:
            masking_pattern = masking_pattern.to(device)
        if outputs is None:
            outputs = "lean" if aatype.shape[1] > LEAN_OUTPUTS_ABOVE else "full"

        def fold() -> EsmForProteinFoldingOutput:
            return self.forward(
                aatype,
                attention_mask=mask,
                position_ids=residx,
                masking_pattern=masking_pattern,
                num_recycles=num_recycles,
                outputs=outputs,
            )

        out = self._fold_retrying(fold, aatype.shape[1]) if aatype.shape[0] == 1 else fold()
        linker = enc["linker_mask"].to(device=device, dtype=out.atom37_atom_exists.dtype)
        out.atom14_atom_exists = out.atom14_atom_exists * linker[..., None]
        out.atom37_atom_exists = out.atom37_atom_exists * linker[..., None]
        exists = out.atom37_atom_exists
        out.mean_plddt = (out.plddt * exists).sum(dim=(1, 2)) / exists.sum(dim=(1, 2))
        out.chain_index = enc["chain_index"].to(device)
        return out

    def _fold_retrying(self, fold, length: int) -> EsmForProteinFoldingOutput:
        """`fold()`; on out of memory, again at smaller chunk sizes (the module docstring)."""
        try:
            return fold()
        except RuntimeError as err:  # torch.OutOfMemoryError is one; MemoryError is not
            if not is_oom(err):
                raise
        failed = self.trunk.chunk_size  # what the failed forward ran with ("auto" resolved)
        setting = self.chunk_size
        tried: list[int | None] = [failed]
        try:
            for size in retry_chunk_sizes(failed, length):
                free_memory(self.device)
                self.set_chunk_size(size)
                tried.append(size)
                try:
                    return fold()
                except RuntimeError as err:
                    if not is_oom(err):
                        raise
        finally:
            self.set_chunk_size(setting)
        free_memory(self.device)
        raise torch.OutOfMemoryError(
            f"ESMFold infer: out of memory folding a sequence of L={length} positions (linkers "
            f"included) alone, at chunk sizes {tried} (None: unchunked; {MIN_CHUNK_SIZE} is "
            "the smallest tried)"
        )

    @torch.no_grad()
    def infer_records(self, sequences: str | Sequence[str], **kwargs: Any) -> list[FoldedRecord]:
        """Fold `sequences` as one padded batch, isolating failures: one record per sequence.

        When the batch fails (out of memory, or a RuntimeError / ValueError / MemoryError), each
        sequence is folded alone (with `infer`'s retry at smaller chunks); an error a sequence
        still raises alone is returned in its record, so it never costs the others. What a job
        folding a FASTA file needs; `infer(max_tokens_per_batch=...)` raises such an error.

        Args:
            sequences: as `infer`'s; `kwargs`: `residue_index_offset`, `chain_linker`,
                `num_recycles`, `outputs`.

        Returns:
            [len(sequences)] `FoldedRecord`s in input order.

        Raises:
            ValueError: invalid input (as `infer`), before any work.
        """
        seqs = [sequences] if isinstance(sequences, str) else list(sequences)
        return self._fold_records(seqs, self._lengths(seqs, kwargs), kwargs)

    def _lengths(self, seqs: list[str], kwargs: dict[str, Any]) -> list[int]:
        """Positions of each sequence, linkers included; validates every sequence."""
        linker = kwargs.get("chain_linker", DEFAULT_LINKER) or ""
        return [len(encode_sequences(s, 0, linker)["aatype"][0]) for s in seqs]

    def _fold_records(self, seqs: list[str], lengths: list[int], kwargs) -> list[FoldedRecord]:
        start = time.perf_counter()
        failure: Exception | None = None
        try:
            out = self.infer(seqs, **kwargs)
        except (RuntimeError, ValueError, MemoryError) as err:
            failure = err
        seconds = time.perf_counter() - start
        if failure is None:
            used = self.last_chunk_size
            total = sum(lengths)
            return [
                FoldedRecord(out.select(b, n), None, used, seconds * n / total)
                for b, n in enumerate(lengths)
            ]
        if len(seqs) == 1:
            return [FoldedRecord(None, failure, None, seconds)]
        del failure  # its traceback holds the failed batch's tensors
        free_memory(self.device)
        return [r for s, n in zip(seqs, lengths) for r in self._fold_records([s], [n], kwargs)]

    def _infer_packed(
        self, sequences: str | Sequence[str], max_tokens: int, **kwargs: Any
    ) -> list[EsmForProteinFoldingOutput]:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"infer: max_tokens_per_batch={max_tokens!r} must be a positive int")
        seqs = [sequences] if isinstance(sequences, str) else list(sequences)
        lengths = self._lengths(seqs, kwargs)
        if kwargs.get("outputs") is None:  # one mode for all, whatever the packing
            kwargs["outputs"] = "lean" if max(lengths) > LEAN_OUTPUTS_ABOVE else "full"
        results: list[EsmForProteinFoldingOutput | None] = [None] * len(seqs)
        for batch in token_batches(lengths, max_tokens):
            folded = self._fold_records(
                [seqs[i] for i in batch], [lengths[i] for i in batch], kwargs
            )
            for i, record in zip(batch, folded):
                if record.error is not None:
                    raise record.error
                results[i] = record.output
        return results  # type: ignore[return-value]

    @staticmethod
    def output_to_pdb(output: EsmForProteinFoldingOutput | dict) -> list[str]:
        """PDB texts, one per batch item, of the final atom positions.

        Only residues with at least one existing atom are written (padding and multimer linkers
        are not); chains are lettered A, B, ... from `chain_index` (all A when absent), residue
        numbers are `residue_index + 1`, and the B-factor column holds pLDDT on 0-100.
        """
        return pdb.output_to_pdb(output, plddt_scale=100.0)

    def infer_pdb(self, sequence: str, *args: Any, **kwargs: Any) -> str:
        """PDB text of one sequence (a multimer as "CHAINA:CHAINB"). See `infer`."""
        if not isinstance(sequence, str):
            raise TypeError(
                f"infer_pdb takes one sequence string, got {type(sequence).__name__}; "
                "use infer_pdbs for a list"
            )
        return self.infer_pdbs([sequence], *args, **kwargs)[0]

    def infer_pdbs(self, sequences: Sequence[str], *args: Any, **kwargs: Any) -> list[str]:
        """PDB texts of several sequences, folded as one padded batch (or several, with
        `max_tokens_per_batch`), in input order. See `infer`."""
        out = self.infer(sequences, *args, **kwargs)
        if isinstance(out, list):
            return [self.output_to_pdb(o)[0] for o in out]
        return self.output_to_pdb(out)


def retry_chunk_sizes(failed: int | None, length: int) -> list[int]:
    """Chunk sizes to retry after an out-of-memory fold of `length` rows at chunk `failed`
    (None: unchunked): halving the rows per block the failed attempt used, down to
    `MIN_CHUNK_SIZE`.

    Example:
        >>> retry_chunk_sizes(64, 1000), retry_chunk_sizes(None, 40)
        ([32, 16, 8, 4], [20, 10, 5])
    """
    rows = length if failed is None else min(failed, length)
    sizes = []
    size = rows // 2
    while size >= MIN_CHUNK_SIZE:
        sizes.append(size)
        size //= 2
    return sizes


# ----------------------------------------------------------------------------------------------
# Sequence encoding
# ----------------------------------------------------------------------------------------------


def _residue_ids(text: str, where: str, first_position: int = 1) -> list[int]:
    """AlphaFold2 ids of `text`; errors name the letter and its 1-based position in the input."""
    for pos, ch in enumerate(text, start=first_position):
        if not ("A" <= ch <= "Z"):
            hint = " (residue letters must be uppercase)" if ch.isalpha() else ""
            raise ValueError(f"{where}: invalid residue letter {ch!r} at position {pos}{hint}")
    return rc.sequence_to_aatype(text)


def encode_sequences(
    sequences: str | Sequence[str],
    residue_index_offset: int | None = DEFAULT_RESIDUE_INDEX_OFFSET,
    chain_linker: str | None = DEFAULT_LINKER,
) -> dict[str, torch.Tensor]:
    """One-letter sequences (multimer chains split by ':') -> padded model inputs.

    Chains are joined by `chain_linker`; the indices of chain c (and of the linker after it)
    are shifted by c * residue_index_offset.

    Returns a dict of [B, L] tensors: `aatype` (AlphaFold2 ids, padding 0), `mask` (1 = residue),
    `residue_index`, `linker_mask` (1 on chain residues, 0 on linkers and padding) and
    `chain_index` (-1 on padding; a linker counts to the chain before it).

    Example:
        >>> enc = encode_sequences("AC:D", chain_linker="GG", residue_index_offset=100)
        >>> enc["aatype"].tolist(), enc["residue_index"].tolist()
        ([[0, 4, 7, 7, 3]], [[0, 1, 2, 3, 104]])
    """
    if isinstance(sequences, str):
        sequences = [sequences]
    if not isinstance(sequences, Sequence) or not all(isinstance(s, str) for s in sequences):
        raise TypeError("sequences must be a string or a list of strings")
    if len(sequences) == 0:
        raise ValueError("sequences is empty: nothing to fold")
    linker = "" if chain_linker is None else chain_linker
    if not isinstance(linker, str):
        raise TypeError(f"chain_linker must be a string or None, got {type(linker).__name__}")
    linker_ids = _residue_ids(linker, "chain_linker")
    offset = 0 if residue_index_offset is None else residue_index_offset
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(
            f"residue_index_offset={residue_index_offset!r} must be an int >= 0 or None"
        )

    fields: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("aatype", "residue_index", "linker_mask", "chain_index")
    }
    for n, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"sequence {n} is empty")
        chains = seq.split(":")
        ids: list[int] = []
        residx: list[int] = []
        keep: list[float] = []
        chain_of: list[int] = []
        start = 0  # position of the chain's first letter in `seq`, for error messages
        for c, chain in enumerate(chains):
            if len(chain) == 0:
                raise ValueError(f"sequence {n}: chain {c} is empty (check the ':' separators)")
            chain_ids = _residue_ids(chain, f"sequence {n}", first_position=start + 1)
            start += len(chain) + 1
            if c > 0:
                ids += linker_ids
                residx += [len(residx) + j + (c - 1) * offset for j in range(len(linker_ids))]
                keep += [0.0] * len(linker_ids)
                chain_of += [c - 1] * len(linker_ids)
            residx += [len(residx) + j + c * offset for j in range(len(chain_ids))]
            ids += chain_ids
            keep += [1.0] * len(chain_ids)
            chain_of += [c] * len(chain_ids)
        fields["aatype"].append(torch.tensor(ids, dtype=torch.long))
        fields["residue_index"].append(torch.tensor(residx, dtype=torch.long))
        fields["linker_mask"].append(torch.tensor(keep, dtype=torch.float32))
        fields["chain_index"].append(torch.tensor(chain_of, dtype=torch.long))

    out = {k: _collate(v, pad=-1 if k == "chain_index" else 0) for k, v in fields.items()}
    out["mask"] = _collate([torch.ones(len(t), dtype=torch.long) for t in fields["aatype"]])
    return out


def _collate(rows: list[torch.Tensor], pad: float = 0) -> torch.Tensor:
    """Right-pad 1-D tensors to [len(rows), max length]."""
    length = max(len(r) for r in rows)
    out = rows[0].new_full((len(rows), length), pad)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
