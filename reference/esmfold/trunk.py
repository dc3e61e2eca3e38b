"""ESMFold folding trunk, plain PyTorch: the spec for the fast trunk.

The trunk (Lin et al. 2023, "Evolutionary-scale prediction of atomic-level protein structure",
supplement A.1) refines a sequence state `s` [B, L, C_s] and a pair state `z` [B, L, L, C_z]
with `num_blocks` triangular self-attention blocks, runs the structure module on the result and
recycles both states plus a distogram of the predicted C-beta atoms `max_recycles` times.

One block (`EsmFoldTriangularSelfAttentionBlock`), with residual additions:

    s += SeqAttention(LN(s), bias = PairToSequence(z), mask)      # gated, pair-biased
    s  = ResidueMLP(s)
    z += SequenceToPair(s)                                        # outer product and difference
    z += TriMulOutgoing(z)   z += TriMulIncoming(z)               # AlphaFold2 Algorithms 11, 12
    z += TriAttStart(z)      z += TriAttEnd(z)                    # AlphaFold2 Algorithms 13, 14
    z  = ResidueMLP(z)

Parameter names are those of transformers' `modeling_esmfold.py` (which are fair-esm's and
openfold's), so `trunk.*` keys of a published checkpoint load unchanged.

The building blocks live in `esmkernels.reference.esmfold.trunk_layers` (re-exported here, where
the trunk is assembled). The heavy pair ops go through two functional ops, `triangle_multiplicative_update` and
`axial_attention` (`esmkernels.reference.esmfold.trunk_functional`). Every module takes an `ops`
argument, a module or object with those two functions, defaulting to that reference module: a
fast model passes its kernel namespace instead and reuses these modules unchanged (`TrunkOps`
keeps the choice picklable).

Masks are 1 = keep, [B, L] over residues; pair masks are their outer product.

Memory. Every op on the pair state takes `chunk_size` (None: unchunked) and computes its
[L, L]-sized work in blocks of that many rows with `trunk_functional.chunk_rows`, the one
chunking utility: projections, attention logits, transition and embeddings are then alive for
one block at a time. In inference (autograd off, eval mode) the trunk also passes
`inplace=True` to the blocks, which add each pair update into the pair state block by block
instead of allocating `z + update`, and it writes each recycling pass's input over the previous
pass's pair state. The outputs are the same either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from esmkernels.core.configuration import TrunkConfig
from esmkernels.reference.esmfold.structure_module import StructureModule
from esmkernels.reference.esmfold.trunk_functional import RowMap, chunk_rows
from esmkernels.reference.esmfold.trunk_layers import (
    EsmFoldAttention,
    EsmFoldDropout,
    EsmFoldPairToSequence,
    EsmFoldRelativePosition,
    EsmFoldResidueMLP,
    EsmFoldSelfAttention,
    EsmFoldSequenceToPair,
    EsmFoldTriangleAttention,
    EsmFoldTriangleMultiplicativeUpdate,
    TrunkOps,
)

# Recycled distogram of predicted C-beta atoms: 15 bins, edges 3.375 .. 21.375 A (AlphaFold2 1.10).
RECYCLE_BINS = 15
RECYCLE_MIN_BIN = 3.375
RECYCLE_MAX_BIN = 21.375

# Ideal C-beta from backbone N, CA, C (AlphaFold2 supplement 1.9.3, used by ESMFold's recycling).
_CB_A, _CB_B, _CB_C = -0.58273431, 0.56802827, -0.54067466


class EsmFoldTriangularSelfAttentionBlock(nn.Module):
    """One folding-trunk block (see the module docstring for the update order)."""

    def __init__(self, config: TrunkConfig, *, ops: Any = None):
        super().__init__()
        self.config = config
        c_s, c_z = config.sequence_state_dim, config.pairwise_state_dim
        seq_heads = c_s // config.sequence_head_width
        pair_heads = c_z // config.pairwise_head_width

        self.layernorm_1 = nn.LayerNorm(c_s)
        self.sequence_to_pair = EsmFoldSequenceToPair(c_s, c_z // 2, c_z)
        self.pair_to_sequence = EsmFoldPairToSequence(c_z, seq_heads)
        self.seq_attention = EsmFoldSelfAttention(
            c_s, seq_heads, config.sequence_head_width, gated=True, ops=ops
        )
        self.tri_mul_out = EsmFoldTriangleMultiplicativeUpdate(config, _outgoing=True, ops=ops)
        self.tri_mul_in = EsmFoldTriangleMultiplicativeUpdate(config, _outgoing=False, ops=ops)
        self.tri_att_start = EsmFoldTriangleAttention(
            c_z, config.pairwise_head_width, pair_heads, starting=True, inf=1e9, ops=ops
        )
        self.tri_att_end = EsmFoldTriangleAttention(
            c_z, config.pairwise_head_width, pair_heads, starting=False, inf=1e9, ops=ops
        )
        self.mlp_seq = EsmFoldResidueMLP(c_s, 4 * c_s, dropout=config.dropout)
        self.mlp_pair = EsmFoldResidueMLP(c_z, 4 * c_z, dropout=config.dropout)
        self.drop = nn.Dropout(config.dropout)
        self.row_drop = EsmFoldDropout(config.dropout * 2, 2)
        self.col_drop = EsmFoldDropout(config.dropout * 2, 1)

    def forward(
        self,
        sequence_state: torch.Tensor,
        pairwise_state: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        inplace: bool = False,
        **_unused: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sequence_state: [B, L, C_s]; pairwise_state: [B, L, L, C_z]; mask: [B, L] (1 = keep).

        `chunk_size`: rows per block of every pair op (None: unchunked). `inplace`: in
        inference (autograd off and eval mode; ignored otherwise) the pair updates are added
        into `pairwise_state`, which is overwritten and returned; the caller must own it.

        Returns the updated (sequence_state, pairwise_state), same shapes.
        """
        _check_states(self.config, sequence_state, pairwise_state, mask)
        s, z = sequence_state, pairwise_state
        if mask is not None:
            mask = mask.to(s.dtype)
        inplace = inplace and not torch.is_grad_enabled() and not self.training

        bias = self.pair_to_sequence(z, chunk_size=chunk_size)
        y = self.seq_attention(self.layernorm_1(s), mask=mask, bias=bias, chunk_size=chunk_size)
        del bias
        s = self.mlp_seq(s + self.drop(y))

        tri_mask = None if mask is None else mask[:, :, None] * mask[:, None, :]
        if inplace:  # the same updates (dropout is off), each added into z as it is computed
            z = self.sequence_to_pair(s, chunk_size=chunk_size, add_into=z)
            for update in (self.tri_mul_out, self.tri_mul_in, self.tri_att_start, self.tri_att_end):
                z = update(z, mask=tri_mask, chunk_size=chunk_size, add_into=z)
            return s, self.mlp_pair(z, chunk_size=chunk_size, inplace=True)

        z = z + self.sequence_to_pair(s, chunk_size=chunk_size)
        z = z + self.row_drop(self.tri_mul_out(z, mask=tri_mask, chunk_size=chunk_size))
        z = z + self.col_drop(self.tri_mul_in(z, mask=tri_mask, chunk_size=chunk_size))
        z = z + self.row_drop(self.tri_att_start(z, mask=tri_mask, chunk_size=chunk_size))
        z = z + self.col_drop(self.tri_att_end(z, mask=tri_mask, chunk_size=chunk_size))
        z = self.mlp_pair(z, chunk_size=chunk_size)
        return s, z


class EsmFoldingTrunk(nn.Module):
    """Folding trunk with recycling and the structure module.

    Args:
        config: `TrunkConfig` (with its nested `StructureModuleConfig`).
        ops: namespace with `triangle_multiplicative_update` and `axial_attention`; default the
            plain-PyTorch reference ops.
    """

    def __init__(self, config: TrunkConfig, *, ops: Any = None):
        super().__init__()
        self.config = config
        c_s, c_z = config.sequence_state_dim, config.pairwise_state_dim
        sm = config.structure_module

        self.pairwise_positional_embedding = EsmFoldRelativePosition(config)
        self.blocks = nn.ModuleList(
            [EsmFoldTriangularSelfAttentionBlock(config, ops=ops) for _ in range(config.num_blocks)]
        )
        self.recycle_bins = RECYCLE_BINS
        self.recycle_s_norm = nn.LayerNorm(c_s)
        self.recycle_z_norm = nn.LayerNorm(c_z)
        self.recycle_disto = nn.Embedding(RECYCLE_BINS, c_z)
        with torch.no_grad():
            self.recycle_disto.weight[0].zero_()
        self.structure_module = StructureModule(sm)
        self.trunk2sm_s = nn.Linear(c_s, sm.sequence_dim)
        self.trunk2sm_z = nn.Linear(c_z, sm.pairwise_dim)
        self.chunk_size = config.chunk_size

    # Chunked inference hands the structure module its pair input as a RowMap of z (see
    # `forward`); tests set False to compare with the materialised tensor.
    _lazy_sm_pair = True

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Chunk the axial ops over rows (memory ~O(L) per chunk); None disables chunking."""
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0
        ):
            raise ValueError(
                f"set_chunk_size: chunk_size={chunk_size!r} must be a positive int or None"
            )
        self.chunk_size = None if chunk_size is None else int(chunk_size)

    def forward(
        self,
        seq_feats: torch.Tensor,
        pair_feats: torch.Tensor,
        true_aa: torch.Tensor,
        residx: torch.Tensor,
        mask: torch.Tensor,
        no_recycles: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the trunk and the structure module with recycling.

        Args:
            seq_feats: [B, L, C_s] initial sequence state.
            pair_feats: [B, L, L, C_z] initial pair state.
            true_aa: [B, L] AlphaFold2 residue types (for the side chains).
            residx: [B, L] int64 residue indices.
            mask: [B, L] residue mask, 1 = keep.
            no_recycles: recycles after the first pass; None runs `config.max_recycles` passes
                in all (transformers' and fair-esm's convention: None means max_recycles
                iterations, an int n means n + 1 iterations).

        Returns:
            The structure module's dict plus `s_s` [B, L, C_s] and `s_z` [B, L, L, C_z].
            Gradients flow through the last iteration only.
        """
        n_iter = num_trunk_iterations(no_recycles, self.config.max_recycles)
        chunk = self.chunk_size
        # Inference: this method owns every pair tensor it makes, so the blocks may update them
        # in place and each pass's input may be written over the previous pass's state.
        inplace = not torch.is_grad_enabled() and not self.training
        # An all-ones mask changes nothing but costs a masking pass per op: drop it.
        block_mask = None if bool(mask.all()) else mask
        s_s_0, s_z_0 = seq_feats, pair_feats
        # The recycled states start at zero; z is dense even for an expanded s_z_0.
        s, z = torch.zeros_like(s_s_0), s_z_0.new_zeros(s_z_0.shape)
        structure: dict[str, torch.Tensor] = {}
        for i in range(n_iter):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i == n_iter - 1):
                if i == 0:
                    recycle_bins = z.new_zeros(z.shape[:-1], dtype=torch.long)
                else:
                    backbone = structure["positions"][-1][:, :, :3]  # atom14 N, CA, C
                    recycle_bins = self.distogram(
                        backbone, RECYCLE_MIN_BIN, RECYCLE_MAX_BIN, RECYCLE_BINS, chunk_size=chunk
                    )
                    structure = {}  # the previous pass's outputs are dead
                s = s_s_0 + self.recycle_s_norm(s.detach())
                # z = s_z_0 + LN(z) + disto(recycle_bins) + relpos, row block by row block.
                z = chunk_rows(
                    self._pair_input_rows,
                    s_z_0,
                    z.detach(),
                    recycle_bins,
                    residx,
                    mask,
                    chunk_size=chunk,
                    out=z if inplace else None,
                    keys=residx,
                    key_mask=mask,
                )
                del recycle_bins
                for block in self.blocks:
                    s, z = block(s, z, mask=block_mask, chunk_size=chunk, inplace=inplace)

                if inplace and chunk is not None and self._lazy_sm_pair:
                    # The structure module reads its pair input one block of query rows at a
                    # time: make those rows from z when read instead of a second pair tensor.
                    sm_pair = RowMap(z, self.trunk2sm_z)
                else:
                    sm_pair = chunk_rows(self.trunk2sm_z, z, chunk_size=chunk)
                structure = self.structure_module(
                    {"single": self.trunk2sm_s(s), "pair": sm_pair},
                    true_aa,
                    mask.to(s.dtype),
                    chunk_size=chunk,
                    inplace=inplace,
                )
                del sm_pair
        structure["s_s"] = s
        structure["s_z"] = z
        return structure

    def _pair_input_rows(
        self,
        s_z_0: torch.Tensor,
        recycle_z: torch.Tensor,
        recycle_bins: torch.Tensor,
        residx: torch.Tensor,
        mask: torch.Tensor,
        *,
        keys: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> torch.Tensor:
        """A block of rows of the pass's pair input (all arguments are those rows)."""
        recycled = self.recycle_z_norm(recycle_z) + self.recycle_disto(recycle_bins)
        return (
            s_z_0
            + recycled
            + self.pairwise_positional_embedding.rows(residx, mask, keys=keys, key_mask=key_mask)
        )

    @staticmethod
    def distogram(
        coords: torch.Tensor,
        min_bin: float,
        max_bin: float,
        num_bins: int,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Bin pairwise distances of the virtual C-beta atoms.

        coords: [..., L, 3, 3] backbone (N, CA, C) -> [..., L, L] int64 bins in [0, num_bins),
        bin edges linspace(min_bin, max_bin, num_bins - 1) in Angstrom; `chunk_size` rows at
        a time.
        """
        edges = torch.linspace(min_bin, max_bin, num_bins - 1, device=coords.device) ** 2
        n, ca, c = coords.unbind(dim=-2)
        b = ca - n
        c = c - ca
        a = torch.cross(b, c, dim=-1)
        cb = _CB_A * a + _CB_B * b + _CB_C * c + ca  # [..., L, 3]

        def bins(cb_rows: torch.Tensor) -> torch.Tensor:
            d2 = (cb[..., None, :, :] - cb_rows[..., :, None, :]).pow(2).sum(dim=-1, keepdim=True)
            return (d2 > edges).sum(dim=-1)

        return chunk_rows(bins, cb, chunk_size=chunk_size, dim=cb.dim() - 2)


def num_trunk_iterations(no_recycles: int | None, max_recycles: int) -> int:
    """Passes through the trunk: `max_recycles` when None, else `no_recycles + 1`."""
    if no_recycles is None:
        return int(max_recycles)
    if isinstance(no_recycles, bool) or not isinstance(no_recycles, int):
        raise TypeError(f"num_recycles must be an int or None, got {no_recycles!r}")
    if no_recycles < 0:
        raise ValueError(f"num_recycles={no_recycles} must be >= 0")
    return no_recycles + 1


def _check_states(
    config: TrunkConfig, s: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None
) -> None:
    if s.dim() != 3 or z.dim() != 4:
        raise ValueError(
            f"trunk block: expected sequence_state [B, L, C_s] and pairwise_state [B, L, L, C_z], "
            f"got shapes {tuple(s.shape)} and {tuple(z.shape)}"
        )
    B, L, c_s = s.shape
    if c_s != config.sequence_state_dim or z.shape[-1] != config.pairwise_state_dim:
        raise ValueError(
            f"trunk block: channel sizes ({c_s}, {z.shape[-1]}) != config "
            f"({config.sequence_state_dim}, {config.pairwise_state_dim})"
        )
    if tuple(z.shape[:3]) != (B, L, L):
        raise ValueError(
            f"trunk block: pairwise_state shape {tuple(z.shape)} inconsistent with "
            f"sequence_state shape {tuple(s.shape)}"
        )
    if mask is not None and tuple(mask.shape) != (B, L):
        raise ValueError(f"trunk block: mask shape {tuple(mask.shape)} != {(B, L)}")


__all__ = [
    "EsmFoldAttention",
    "EsmFoldDropout",
    "EsmFoldPairToSequence",
    "EsmFoldRelativePosition",
    "EsmFoldResidueMLP",
    "EsmFoldSelfAttention",
    "EsmFoldSequenceToPair",
    "EsmFoldTriangleAttention",
    "EsmFoldTriangleMultiplicativeUpdate",
    "EsmFoldTriangularSelfAttentionBlock",
    "EsmFoldingTrunk",
    "TrunkOps",
    "num_trunk_iterations",
]
