"""Building blocks of the ESMFold folding trunk, plain PyTorch (the spec for the fast trunk).

The modules one trunk block is made of (`esmkernels.reference.esmfold.trunk` assembles them):
triangle multiplicative updates (AlphaFold2 Algorithms 11, 12), gated attention and triangle
attention (Algorithms 13, 14), the pair-biased sequence attention, sequence -> pair and
pair -> sequence projections, the residue transition MLP, the relative-position embedding, and
`TrunkOps`, the picklable handle on the functional op namespace (reference or kernels).

Parameter names are those of transformers' `modeling_esmfold.py`, so checkpoint keys load
unchanged. Masks are 1 = keep. Every op on the pair state takes `chunk_size` (rows of the pair;
None: unchunked) and chunks through `trunk_functional.chunk_rows`.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

import torch
from torch import nn

from esmkernels.core.configuration import TrunkConfig
from esmkernels.reference.esmfold import trunk_functional as _reference_ops
from esmkernels.reference.esmfold.trunk_functional import chunk_rows


class TrunkOps:
    """Handle on a trunk-op namespace that survives `copy.deepcopy` and pickling.

    `ops` is a module (kept by name, re-imported on use) or any object with
    `triangle_multiplicative_update` and `axial_attention`; None means the reference ops.
    """

    _REQUIRED = ("triangle_multiplicative_update", "axial_attention")

    def __init__(self, ops: Any = None):
        if isinstance(ops, TrunkOps):
            ops = ops.namespace
        ops = _reference_ops if ops is None else ops
        missing = [f for f in self._REQUIRED if not callable(getattr(ops, f, None))]
        if missing:
            raise TypeError(f"trunk ops {ops!r} lack {missing}")
        self._module = ops.__name__ if isinstance(ops, types.ModuleType) else None
        self._object = None if self._module else ops

    @property
    def namespace(self) -> Any:
        return importlib.import_module(self._module) if self._module else self._object

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not yet set while unpickling
            raise AttributeError(name)
        return getattr(self.namespace, name)

    def __repr__(self) -> str:
        return f"TrunkOps({self._module or self._object!r})"


class EsmFoldDropout(nn.Module):
    """Dropout whose mask is shared along `batch_dim` (row-wise or column-wise dropout).

    `batch_dim=2` on a pair tensor [B, I, J, C] drops whole rows (the same mask for every j);
    `batch_dim=1` drops whole columns. An identity in eval mode.
    """

    def __init__(self, r: float, batch_dim: int | list[int]):
        super().__init__()
        self.r = r
        self.batch_dim = [batch_dim] if isinstance(batch_dim, int) else list(batch_dim)
        self.dropout = nn.Dropout(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.r == 0:
            return x
        shape = list(x.shape)
        for d in self.batch_dim:
            shape[d] = 1
        return x * self.dropout(x.new_ones(shape))


class EsmFoldTriangleMultiplicativeUpdate(nn.Module):
    """Triangle multiplicative update (AlphaFold2 Algorithm 11 outgoing, Algorithm 12 incoming).

    Outgoing: update_ij = g_ij * W_z LN(sum_k a_ik b_jk); incoming: sum_k a_ki b_kj; with
    a = mask * sigmoid(W_ag LN(z)) * W_ap LN(z) (b alike) and g = sigmoid(W_g LN(z)).
    Hidden width = `pairwise_state_dim` (as ESMFold).
    """

    def __init__(self, config: TrunkConfig, _outgoing: bool = True, *, ops: Any = None):
        super().__init__()
        c = config.pairwise_state_dim
        self._outgoing = _outgoing
        self.ops = TrunkOps(ops)
        self.linear_a_p = nn.Linear(c, c)
        self.linear_a_g = nn.Linear(c, c)
        self.linear_b_p = nn.Linear(c, c)
        self.linear_b_g = nn.Linear(c, c)
        self.linear_g = nn.Linear(c, c)
        self.linear_z = nn.Linear(c, c)
        self.layer_norm_in = nn.LayerNorm(c)
        self.layer_norm_out = nn.LayerNorm(c)
        for gate in (self.linear_a_g, self.linear_b_g, self.linear_g):
            _gating_init_(gate)
        _zeros_init_(self.linear_z)

    def forward(
        self,
        z: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        add_into: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z: [B, L, L, C_z]; mask: [B, L, L] (1 = keep) or None -> update [B, L, L, C_z].

        With `add_into` (inference), the update is added into that tensor, which is returned.
        """
        update = self.ops.triangle_multiplicative_update(
            z,
            mask,
            ln_in_weight=self.layer_norm_in.weight,
            ln_in_bias=self.layer_norm_in.bias,
            a_proj_weight=self.linear_a_p.weight,
            a_proj_bias=self.linear_a_p.bias,
            a_gate_weight=self.linear_a_g.weight,
            a_gate_bias=self.linear_a_g.bias,
            b_proj_weight=self.linear_b_p.weight,
            b_proj_bias=self.linear_b_p.bias,
            b_gate_weight=self.linear_b_g.weight,
            b_gate_bias=self.linear_b_g.bias,
            ln_out_weight=self.layer_norm_out.weight,
            ln_out_bias=self.layer_norm_out.bias,
            out_proj_weight=self.linear_z.weight,
            out_proj_bias=self.linear_z.bias,
            out_gate_weight=self.linear_g.weight,
            out_gate_bias=self.linear_g.bias,
            outgoing=self._outgoing,
            eps=self.layer_norm_in.eps,
            chunk_size=chunk_size,
            add_into=add_into,  # the op adds it (the kernels without a full update tensor)
        )
        return update


class EsmFoldAttention(nn.Module):
    """Gated multi-head attention parameters of the triangle attention (`mha`, openfold names).

    `c_hidden` is the per-head width; q, k, v have no bias; the gate `linear_g` and the output
    `linear_o` do. Attention itself is computed by `EsmFoldTriangleAttention`.
    """

    def __init__(self, c_in: int, c_hidden: int, no_heads: int):
        super().__init__()
        self.c_hidden = c_hidden
        self.no_heads = no_heads
        hc = c_hidden * no_heads
        self.linear_q = nn.Linear(c_in, hc, bias=False)
        self.linear_k = nn.Linear(c_in, hc, bias=False)
        self.linear_v = nn.Linear(c_in, hc, bias=False)
        self.linear_o = nn.Linear(hc, c_in)
        self.linear_g = nn.Linear(c_in, hc)
        _gating_init_(self.linear_g)
        _zeros_init_(self.linear_o)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: [..., C_in] -> q, k, v, gate logits, each [..., H, c_hidden]."""
        heads = (self.no_heads, self.c_hidden)
        return tuple(
            lin(x).unflatten(-1, heads)
            for lin in (self.linear_q, self.linear_k, self.linear_v, self.linear_g)
        )


class EsmFoldTriangleAttention(nn.Module):
    """Triangle self-attention around the starting node (Algorithm 13) or ending node (14).

    Starting node: for each row i, pair (i, j) attends over (i, k) with bias b_jk = W LN(z)_jk.
    Ending node: the same on the transposed pair state, for each column j over (k, j) with bias
    b_ik from the transposed state. Implemented on transposed views, never on copies.
    """

    def __init__(
        self,
        c_in: int,
        c_hidden: int,
        no_heads: int,
        starting: bool = True,
        inf: float = 1e9,
        *,
        ops: Any = None,
    ):
        super().__init__()
        self.c_in = c_in
        self.c_hidden = c_hidden
        self.no_heads = no_heads
        self.starting = starting
        self.inf = inf  # kept for config parity; masking is exact in `axial_attention`
        self.ops = TrunkOps(ops)
        self.layer_norm = nn.LayerNorm(c_in)
        self.linear = nn.Linear(c_in, no_heads, bias=False)
        self.mha = EsmFoldAttention(c_in, c_hidden, no_heads)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        add_into: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, I, J, C_in]; mask: [B, I, J] (1 = keep) or None -> update [B, I, J, C_in].

        Rows (starting node) or columns (ending node) attend independently, given the bias
        shared by all of them: both are computed in blocks of `chunk_size`. With `add_into`
        (inference), each block of the update is added into that tensor, which is returned.
        """
        bias = chunk_rows(self._bias_rows, x, chunk_size=chunk_size)  # [B, I, J, H]
        if self.starting:
            bias = bias.permute(0, 3, 1, 2)  # [B, H, query j, key k] from pairs (j, k)
        else:
            # Rows of the transposed state are columns: bias[h, query i, key k] = lin(x)[k, i].
            bias = bias.permute(0, 3, 2, 1)
        return chunk_rows(
            self._update_rows,
            x,
            mask,
            chunk_size=chunk_size,
            dim=1 if self.starting else 2,
            out=add_into,
            accumulate=add_into is not None,
            bias=bias,
            query_chunk=chunk_size,
        )

    def _bias_rows(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.layer_norm(x))

    def _update_rows(
        self, x: torch.Tensor, mask: torch.Tensor | None, *, bias: torch.Tensor, query_chunk
    ) -> torch.Tensor:
        """A block of rows [B, I', J, C_in] (starting) or columns [B, I, J', C_in] (ending)."""
        q, k, v, g = self.mha.project(self.layer_norm(x))  # [B, I', J, H, D] each
        if not self.starting:  # attention runs along rows of the transposed block
            q, k, v, g = (t.transpose(1, 2) for t in (q, k, v, g))
            mask = None if mask is None else mask.transpose(1, 2)
        o = self.ops.axial_attention(
            q,
            k,
            v,
            bias=bias,
            mask=mask,
            gate=g,
            scale=self.c_hidden**-0.5,
            chunk_size=query_chunk,
        )  # [B, R, N, H, D]
        if not self.starting:
            o = o.transpose(1, 2)
        return self.mha.linear_o(o.flatten(-2))


class EsmFoldSelfAttention(nn.Module):
    """Sequence self-attention with an external pair bias and a sigmoid output gate.

    `proj` packs q, k, v per head: the fused output [.., L, 3 * C] reads as [.., L, H, 3 * D] with
    q, k, v the three D-wide slices of each head (ESM's layout, kept so checkpoints load).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_width: int,
        gated: bool = False,
        *,
        ops: Any = None,
    ):
        super().__init__()
        if embed_dim != num_heads * head_width:
            raise ValueError(
                f"EsmFoldSelfAttention: embed_dim={embed_dim} != num_heads={num_heads} * "
                f"head_width={head_width}"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_width = head_width
        self.gated = gated
        self.ops = TrunkOps(ops)
        self.proj = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.o_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        if gated:
            self.g_proj = nn.Linear(embed_dim, embed_dim)
            _gating_init_(self.g_proj)
        self.rescale_factor = head_width**-0.5
        nn.init.zeros_(self.o_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """x: [B, L, C]; mask: [B, L] (1 = keep); bias: [B, L, L, H] (query, key) -> [B, L, C]."""
        B, L, _ = x.shape
        t = self.proj(x).view(B, 1, L, self.num_heads, 3 * self.head_width)
        q, k, v = t.split(self.head_width, dim=-1)  # [B, 1, L, H, D] strided views
        gate = self.g_proj(x).view(B, 1, L, self.num_heads, self.head_width) if self.gated else None
        y = self.ops.axial_attention(
            q,
            k,
            v,
            bias=None if bias is None else bias.permute(0, 3, 1, 2),
            mask=None if mask is None else mask[:, None, :],
            gate=gate,
            scale=self.rescale_factor,
            chunk_size=chunk_size,
        )
        return self.o_proj(y.reshape(B, L, self.embed_dim))


class EsmFoldSequenceToPair(nn.Module):
    """Pair update from the sequence state: z_ij = W_o [q_j * k_i, q_j - k_i], (q, k) = W LN(s)."""

    def __init__(self, sequence_state_dim: int, inner_dim: int, pairwise_state_dim: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(sequence_state_dim)
        self.proj = nn.Linear(sequence_state_dim, inner_dim * 2, bias=True)
        self.o_proj = nn.Linear(2 * inner_dim, pairwise_state_dim, bias=True)
        nn.init.zeros_(self.proj.bias)
        _zeros_init_(self.o_proj)

    def forward(
        self,
        sequence_state: torch.Tensor,
        chunk_size: int | None = None,
        add_into: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sequence_state: [B, L, C_s] -> [B, L, L, C_z], in blocks of `chunk_size` rows i.

        With `add_into` (inference), the pairs are added into that tensor, which is returned.
        """
        q, k = self.proj(self.layernorm(sequence_state)).chunk(2, dim=-1)
        return chunk_rows(
            self._pair_rows,
            k,
            chunk_size=chunk_size,
            out=add_into,
            accumulate=add_into is not None,
            q=q,
        )

    def _pair_rows(self, k: torch.Tensor, *, q: torch.Tensor) -> torch.Tensor:
        q_j, k_i = q[:, None, :, :], k[:, :, None, :]
        return self.o_proj(torch.cat([q_j * k_i, q_j - k_i], dim=-1))


class EsmFoldPairToSequence(nn.Module):
    """Per-head attention bias for the sequence attention: W LN(z), [B, L, L, H]."""

    def __init__(self, pairwise_state_dim: int, num_heads: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(pairwise_state_dim)
        self.linear = nn.Linear(pairwise_state_dim, num_heads, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, pairwise_state: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """pairwise_state: [B, L, L, C_z] -> pairwise_bias [B, L, L, H], `chunk_size` rows at a time."""
        return chunk_rows(self._bias_rows, pairwise_state, chunk_size=chunk_size)

    def _bias_rows(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(self.layernorm(z))


class EsmFoldResidueMLP(nn.Module):
    """Pre-norm transition with its residual: x + Dropout(W2 relu(W1 LN(x)))."""

    def __init__(self, embed_dim: int, inner_dim: int, dropout: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, inner_dim),
            nn.ReLU(),
            nn.Linear(inner_dim, embed_dim),
            nn.Dropout(dropout),
        )
        _zeros_init_(self.mlp[-2])

    def forward(
        self, x: torch.Tensor, chunk_size: int | None = None, inplace: bool = False
    ) -> torch.Tensor:
        """x: [B, L, C] or [B, L, L, C] -> x + MLP(x), in blocks of `chunk_size` rows.

        `inplace` (inference only): add the MLP output into x, which is returned.
        """
        if inplace:
            return chunk_rows(self.mlp, x, chunk_size=chunk_size, out=x, accumulate=True)
        return chunk_rows(self._residual_rows, x, chunk_size=chunk_size)

    def _residual_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class EsmFoldRelativePosition(nn.Module):
    """Clipped relative-position embedding of residue indices.

    Pair (i, j) gets embedding row clamp(r_j - r_i, -bins, bins) + bins + 1; row 0 is reserved
    for pairs with a masked residue.
    """

    def __init__(self, config: TrunkConfig):
        super().__init__()
        self.bins = config.position_bins
        self.embedding = nn.Embedding(2 * self.bins + 2, config.pairwise_state_dim)

    def forward(
        self,
        residue_index: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """residue_index: [B, L] int64; mask: [B, L] (1 = keep) -> [B, L, L, C_z]."""
        if residue_index.dtype != torch.long:
            raise TypeError(
                f"EsmFoldRelativePosition: residue_index must be torch.long, got {residue_index.dtype}"
            )
        if mask is not None and mask.shape != residue_index.shape:
            raise ValueError(
                f"EsmFoldRelativePosition: mask shape {tuple(mask.shape)} != residue_index "
                f"shape {tuple(residue_index.shape)}"
            )
        return chunk_rows(
            self.rows,
            residue_index,
            mask,
            chunk_size=chunk_size,
            keys=residue_index,
            key_mask=mask,
        )

    def rows(
        self,
        index: torch.Tensor,
        mask: torch.Tensor | None,
        *,
        keys: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Embeddings of pairs (i, j) for a block of residues i: index, mask [B, I] and all
        residues' keys, key_mask [B, L] -> [B, I, L, C_z]."""
        diff = keys[:, None, :] - index[:, :, None]
        idx = diff.clamp(-self.bins, self.bins) + self.bins + 1
        if mask is not None:
            pair = key_mask[:, None, :].bool() & mask[:, :, None].bool()
            idx = idx.masked_fill(~pair, 0)
        return self.embedding(idx)


def _gating_init_(linear: nn.Linear) -> None:
    """Gates start open at sigmoid(1): zero weight, unit bias (AlphaFold2 1.11.4)."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(1.0)


def _zeros_init_(linear: nn.Linear) -> None:
    """Residual branches start as identities: final projections are zero (AlphaFold2 1.11.4)."""
    with torch.no_grad():
        linear.weight.zero_()
        if linear.bias is not None:
            linear.bias.zero_()


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
    "TrunkOps",
]
