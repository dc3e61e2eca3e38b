"""ESMFold structure module: AlphaFold2 supplement Alg. 20 with IPA (Alg. 22), plain PyTorch.

Module and parameter names follow transformers' `EsmFoldStructureModule`, so the
`trunk.structure_module.*` weights of `facebook/esmfold_v1` load unchanged.

Notation: `B` batch, `N` residues, `c_s` single channels (`sequence_dim`), `c_z` pair channels
(`pairwise_dim`), `H` IPA heads, `C` IPA head width (`ipa_dim`), `P_q` / `P_v` query-key / value
points per head.

Precision (as in HF's port): the single stream runs in the module dtype; frames, IPA's points,
the attention logits that mix with point distances, and all atom positions are fp32 (or
float64), because `Rigid` promotes half precision. The IPA output is cast back to the pair
dtype before `linear_out`. Residue constants stay fp32 buffers whatever dtype the module is cast
to (HF creates them lazily in the activations' dtype, so under bf16 its constants are rounded).

Example:
    >>> import torch
    >>> from esmkernels.core.configuration import StructureModuleConfig
    >>> cfg = StructureModuleConfig(sequence_dim=32, pairwise_dim=16, ipa_dim=8, resnet_dim=16,
    ...                             num_heads_ipa=2, num_qk_points=2, num_v_points=2, num_blocks=2)
    >>> sm = StructureModule(cfg).eval()
    >>> out = sm({"single": torch.randn(1, 5, 32), "pair": torch.randn(1, 5, 5, 16)},
    ...          aatype=torch.zeros(1, 5, dtype=torch.long))
    >>> out["positions"].shape, out["frames"].shape
    (torch.Size([2, 1, 5, 14, 3]), torch.Size([2, 1, 5, 7]))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from esmkernels.reference.esmfold import residue_constants as rc
from esmkernels.reference.esmfold.geometry import (
    frames_and_literature_positions_to_atom14_pos,
    torsion_angles_to_frames,
)
from esmkernels.reference.esmfold.rigid import Rigid, Rotation
from esmkernels.reference.esmfold.trunk_functional import RowMap, chunk_rows

# softplus^-1(1): IPA head weights start at softplus(w) = 1 (AF2 supplement 1.11.4).
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)


class Linear(nn.Linear):
    """nn.Linear with the AlphaFold2 initialisers (supplement 1.11.4).

    `init`: "default" LeCun normal (std 1/sqrt(fan_in)), "relu" He normal (std sqrt(2/fan_in)),
    "final" all zeros (residual branches start as identity). Biases start at zero. Parameter
    names are nn.Linear's (`weight`, `bias`), as in HF's `EsmFoldLinear`.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, init: str = "default") -> None:
        if init not in ("default", "relu", "final"):
            raise ValueError(f"Linear: init must be 'default', 'relu' or 'final', got {init!r}")
        super().__init__(in_dim, out_dim, bias=bias)
        self.init = init
        with torch.no_grad():
            if init == "final":
                self.weight.zero_()
            else:
                gain = 2.0 if init == "relu" else 1.0
                self.weight.normal_(0.0, math.sqrt(gain / max(1, in_dim)))
            if self.bias is not None:
                self.bias.zero_()


class InvariantPointAttention(nn.Module):
    """Invariant point attention, AF2 supplement Alg. 22.

    Attention logits combine scalar q.k, a pair bias from z, and distances between query and key
    points placed in 3D by each residue's frame; the output gathers scalars, points (mapped back
    into the receiving frame) and pair features. Under any global rigid motion of the frames the
    output is unchanged.

    As in AF2's code (not its pseudocode) the q/k/v projections have biases.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        c_s, c_z = config.sequence_dim, config.pairwise_dim
        self.hidden_dim = config.ipa_dim
        self.num_heads = config.num_heads_ipa
        self.num_qk_points = config.num_qk_points
        self.num_v_points = config.num_v_points
        h, c = self.num_heads, self.hidden_dim

        self.linear_q = Linear(c_s, h * c)
        self.linear_kv = Linear(c_s, 2 * h * c)
        self.linear_q_points = Linear(c_s, h * self.num_qk_points * 3)
        self.linear_kv_points = Linear(c_s, h * (self.num_qk_points + self.num_v_points) * 3)
        self.linear_b = Linear(c_z, h)
        self.head_weights = nn.Parameter(torch.full((h,), _SOFTPLUS_INV_1))
        self.linear_out = Linear(h * (c_z + c + self.num_v_points * 4), c_s, init="final")

    def _points(self, linear: nn.Linear, s: torch.Tensor, r: Rigid, n_points: int) -> torch.Tensor:
        """Project s to local points and map them to the global frame: [B, N, H, n_points, 3].

        The projection's channels are laid out (xyz, head, point), as in AF2's checkpoints.
        """
        local = linear(s).unflatten(-1, (3, -1)).movedim(-2, -1)  # [B, N, H * n_points, 3]
        glob = r[..., None].apply(local)  # fp32
        return glob.unflatten(-2, (self.num_heads, n_points))

    def forward(
        self,
        s: torch.Tensor,
        z: torch.Tensor | RowMap,
        r: Rigid,
        mask: torch.Tensor,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """
        Args:
            s: `[B, N, c_s]` single representation.
            z: `[B, N, N, c_z]` pair representation, or a `RowMap` of it (each block of query
               rows is then computed when the block runs).
            r: backbone frames, batch shape `[B, N]` (translations in nm-like units: the
               structure module divides Angstrom by `trans_scale_factor`).
            mask: `[B, N]` residue mask, 1 = keep.
            chunk_size: queries per block (None: all); the [B, H, N, N] logits and the point
               distances are alive for one block of queries at a time.

        Returns:
            `[B, N, c_s]` update for s (AF2 Alg. 22 line 11, before the residual add).
        """
        h, c = self.num_heads, self.hidden_dim

        # Scalar queries, keys, values: [B, N, H, C].
        q = self.linear_q(s).unflatten(-1, (h, c))
        k, v = self.linear_kv(s).unflatten(-1, (h, 2 * c)).split(c, dim=-1)
        # Points in the global frame: [B, N, H, P, 3] (fp32).
        q_pts = self._points(self.linear_q_points, s, r, self.num_qk_points)
        kv_pts = self._points(self.linear_kv_points, s, r, self.num_qk_points + self.num_v_points)
        k_pts, v_pts = kv_pts.split([self.num_qk_points, self.num_v_points], dim=-2)
        # Everything that mixes with point distances runs in fp32 (float64 stays float64), also
        # under autocast: HF disables fp16 autocast for q.k and its points are fp32 already.
        acc = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=s.device.type, enabled=False):
            # Queries are independent given all keys: [B, N, H * (C + 3 P_v + c_z)] in blocks.
            out = chunk_rows(
                self._attend_queries,
                q.to(acc),
                q_pts.to(acc),
                z,
                mask.to(acc),
                chunk_size=chunk_size,
                k=k.to(acc),
                v=v.to(acc),
                k_pts=k_pts.to(acc),
                v_pts=v_pts.to(acc),
                key_mask=mask.to(acc),
            )
            o, o_pt, o_pair = out.split([h * c, h * self.num_v_points * 3, h * z.shape[-1]], -1)
            o_pt = o_pt.unflatten(-1, (h, self.num_v_points, 3))  # [B, N, H, P_v, 3]
            o_pt = r[..., None, None].invert_apply(o_pt)  # back into each residue's frame
            o_pt_norm = torch.sqrt(o_pt.pow(2).sum(-1) + self.config.epsilon).flatten(-2)
            o_pt = o_pt.flatten(-3, -2)  # [B, N, H*P_v, 3]

        # Channel order of AF2's checkpoint: scalars, point x, y, z, point norms, pair.
        features = torch.cat([o, *o_pt.unbind(dim=-1), o_pt_norm, o_pair], dim=-1)
        return self.linear_out(features.to(z.dtype))

    def _attend_queries(
        self,
        q: torch.Tensor,
        q_pts: torch.Tensor,
        z: torch.Tensor,
        mask: torch.Tensor,
        *,
        k: torch.Tensor,
        v: torch.Tensor,
        k_pts: torch.Tensor,
        v_pts: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Alg. 22 lines 7-10 for a block of queries i (q, q_pts, z, mask: those rows), in fp32.

        Returns [B, I, H * C + H * P_v * 3 + H * c_z]: scalar outputs, value points in the
        global frame, pair outputs.
        """
        cfg = self.config
        c = self.hidden_dim
        # Logits [B, H, I, N] (Alg. 22 line 7, with w_L = sqrt(1/3) over the three terms).
        b = self.linear_b(z)  # [B, I, N, H]
        logits = torch.einsum("bihc,bjhc->bhij", q, k)
        logits = logits * math.sqrt(1.0 / (3 * c))
        logits = logits + math.sqrt(1.0 / 3) * b.permute(0, 3, 1, 2).to(logits.dtype)
        # Point term: -gamma_h * w_C / 2 * sum_p |q_p - k_p|^2, w_C = sqrt(2 / (9 P_q)).
        sq_dist = (q_pts[:, :, None] - k_pts[:, None, :]).pow(2).sum(-1)  # [B, I, N, H, P]
        gamma = nn.functional.softplus(self.head_weights)
        gamma = gamma * math.sqrt(1.0 / (3 * (self.num_qk_points * 9.0 / 2)))
        pt_term = -0.5 * (sq_dist * gamma[:, None]).sum(-1)  # [B, I, N, H]
        logits = logits + pt_term.permute(0, 3, 1, 2)
        # Masked keys get -inf (a large finite value, so fully masked rows stay finite).
        pair_mask = mask[..., :, None] * key_mask[..., None, :]
        logits = logits + (cfg.inf * (pair_mask - 1))[:, None]
        attn = torch.softmax(logits, dim=-1)  # [B, H, I, N], fp32

        # Outputs (Alg. 22 lines 8-10).
        o = torch.einsum("bhij,bjhc->bihc", attn, v).flatten(-2)  # [B, I, H*C]
        o_pt = torch.einsum("bhij,bjhpx->bihpx", attn, v_pts).flatten(-3)  # [B, I, H*P_v*3]
        o_pair = torch.einsum("bhij,bijc->bihc", attn, z.to(attn.dtype)).flatten(-2)
        return torch.cat([o, o_pt, o_pair], dim=-1)


class BackboneUpdate(nn.Module):
    """AF2 Alg. 23 line 1: single representation -> quaternion vector part (3) + translation (3)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.linear = Linear(config.sequence_dim, 6, init="final")

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """`[B, N, c_s]` -> `[B, N, 6]` update for `Rigid.compose_q_update_vec`."""
        return self.linear(s)


class StructureModuleTransitionLayer(nn.Module):
    """Three linears with ReLUs and a residual (AF2 Alg. 20 line 8)."""

    def __init__(self, config) -> None:
        super().__init__()
        c = config.sequence_dim
        self.linear_1 = Linear(c, c, init="relu")
        self.linear_2 = Linear(c, c, init="relu")
        self.linear_3 = Linear(c, c, init="final")

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """`[B, N, c_s]` -> `[B, N, c_s]`."""
        x = torch.relu(self.linear_1(s))
        x = torch.relu(self.linear_2(x))
        return s + self.linear_3(x)


class StructureModuleTransition(nn.Module):
    """The single-representation transition, then dropout and LayerNorm (AF2 Alg. 20 lines 8-9)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            StructureModuleTransitionLayer(config) for _ in range(config.num_transition_layers)
        )
        self.dropout = nn.Dropout(config.dropout_rate)
        self.layer_norm = nn.LayerNorm(config.sequence_dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """`[B, N, c_s]` -> `[B, N, c_s]`."""
        for layer in self.layers:
            s = layer(s)
        return self.layer_norm(self.dropout(s))


class AngleResnetBlock(nn.Module):
    """ReLU -> linear -> ReLU -> linear, plus residual (AF2 Alg. 20 lines 12-13)."""

    def __init__(self, config) -> None:
        super().__init__()
        self.linear_1 = Linear(config.resnet_dim, config.resnet_dim, init="relu")
        self.linear_2 = Linear(config.resnet_dim, config.resnet_dim, init="final")

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a + self.linear_2(torch.relu(self.linear_1(torch.relu(a))))


class AngleResnet(nn.Module):
    """Torsion-angle head, AF2 Alg. 20 lines 11-14.

    Like AF2's code (not its pseudocode), ReLUs are applied to both inputs before projection.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.linear_in = Linear(config.sequence_dim, config.resnet_dim)
        self.linear_initial = Linear(config.sequence_dim, config.resnet_dim)
        self.layers = nn.ModuleList(
            AngleResnetBlock(config) for _ in range(config.num_resnet_blocks)
        )
        self.linear_out = Linear(config.resnet_dim, config.num_angles * 2)

    def forward(
        self, s: torch.Tensor, s_initial: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            s: `[B, N, c_s]` current single representation.
            s_initial: `[B, N, c_s]` single representation at the start of the structure module.

        Returns:
            (unnormalized, normalized) angles, each `[B, N, num_angles, 2]` as (sin, cos); the
            normalised pair has unit length (up to `epsilon`).
        """
        a = self.linear_in(torch.relu(s)) + self.linear_initial(torch.relu(s_initial))
        for layer in self.layers:
            a = layer(a)
        unnormalized = self.linear_out(torch.relu(a)).unflatten(-1, (-1, 2))
        norm = torch.sqrt(unnormalized.pow(2).sum(-1, keepdim=True).clamp(min=self.config.epsilon))
        return unnormalized, unnormalized / norm


class StructureModule(nn.Module):
    """ESMFold's structure module: AF2 supplement Alg. 20 (8 shared-weight blocks by default).

    Buffers `default_frames` [21, 8, 4, 4], `group_idx` [21, 14], `atom_mask` [21, 14] and
    `lit_positions` [21, 14, 3] hold the residue constants; they are non-persistent, as in HF, so
    state dicts carry parameters only.
    """

    _CONSTANT_BUFFERS = {
        "default_frames": (rc.restype_rigid_group_default_frame, torch.float32),
        "group_idx": (rc.restype_atom14_to_rigid_group, torch.long),
        "atom_mask": (rc.restype_atom14_mask, torch.float32),
        "lit_positions": (rc.restype_atom14_rigid_group_positions, torch.float32),
    }

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        c_s = config.sequence_dim
        self.layer_norm_s = nn.LayerNorm(c_s)
        self.layer_norm_z = nn.LayerNorm(config.pairwise_dim)
        self.linear_in = Linear(c_s, c_s)
        self.ipa = InvariantPointAttention(config)
        self.ipa_dropout = nn.Dropout(config.dropout_rate)
        self.layer_norm_ipa = nn.LayerNorm(c_s)
        self.transition = StructureModuleTransition(config)
        self.bb_update = BackboneUpdate(config)
        self.angle_resnet = AngleResnet(config)
        for name, (array, dtype) in self._CONSTANT_BUFFERS.items():
            self.register_buffer(name, torch.tensor(array, dtype=dtype), persistent=False)

    def _apply(self, fn, recurse=True):
        # `.half()` / `.to(bfloat16)` would round the geometry constants; keep them fp32 (only
        # their device follows the module).
        super()._apply(fn, recurse)
        for name, (array, dtype) in self._CONSTANT_BUFFERS.items():
            buf = getattr(self, name)
            if buf.dtype != dtype:
                setattr(self, name, torch.tensor(array, dtype=dtype, device=buf.device))
        return self

    def forward(
        self,
        evoformer_output_dict: dict[str, torch.Tensor],
        aatype: torch.Tensor,
        mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
        inplace: bool = False,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            evoformer_output_dict: `{"single": [B, N, c_s], "pair": [B, N, N, c_z]}`; "pair"
                may be a `RowMap` (rows made on demand, e.g. the trunk's projection of its own
                pair state): its LayerNorm is then applied to each block of rows when IPA reads
                it, at every block of the module, and no [B, N, N, c_z] tensor is made.
            aatype: `[B, N]` long, AlphaFold residue types 0..20.
            mask: `[B, N]` float residue mask, 1 = keep (all ones when None).
            chunk_size: rows per block of the pair LayerNorm and of IPA's queries (None: all).
                With the same chunk_size a RowMap pair gives bitwise the same result as the
                tensor it maps (the same row blocks are computed).
            inplace: normalise a tensor "pair" in place (inference only; the caller's tensor is
                overwritten), so no second pair tensor is allocated. A RowMap is never written.

        Returns:
            dict, stacked over the `n_blocks = config.num_blocks` iterations:
            - `frames` `[n_blocks, B, N, 7]` backbone quaternion + translation (Angstrom)
            - `sidechain_frames` `[n_blocks, B, N, 8, 4, 4]` rigid-group -> global frames
            - `unnormalized_angles`, `angles` `[n_blocks, B, N, 7, 2]` (sin, cos)
            - `positions` `[n_blocks, B, N, 14, 3]` atom14 positions (Angstrom)
            - `states` `[n_blocks, B, N, c_s]` single representation after each block
            - `single` `[B, N, c_s]` final single representation
        """
        s, z = evoformer_output_dict["single"], evoformer_output_dict["pair"]
        if s.dim() != 3 or len(z.shape) != 4 or z.shape[:3] != (s.shape[0], s.shape[1], s.shape[1]):
            raise ValueError(
                f"StructureModule: single must be [B, N, c_s] and pair [B, N, N, c_z], got "
                f"{tuple(s.shape)} and {tuple(z.shape)}"
            )
        if aatype.shape != s.shape[:2]:
            raise ValueError(
                f"StructureModule: aatype shape {tuple(aatype.shape)} != [B, N] {tuple(s.shape[:2])}"
            )
        if mask is None:
            mask = s.new_ones(s.shape[:-1])
        cfg = self.config

        s = self.layer_norm_s(s)
        if isinstance(z, RowMap):
            z = z.then(self.layer_norm_z)
        else:
            z = chunk_rows(self.layer_norm_z, z, chunk_size=chunk_size, out=z if inplace else None)
        s_initial = s
        s = self.linear_in(s)
        rigids = Rigid.identity(s.shape[:-1], s.dtype, s.device, fmt="quat")

        outputs: dict[str, list[torch.Tensor]] = {}
        for _ in range(cfg.num_blocks):
            s = s + self.ipa(s, z, rigids, mask, chunk_size=chunk_size)
            s = self.layer_norm_ipa(self.ipa_dropout(s))
            s = self.transition(s)
            rigids = rigids.compose_q_update_vec(self.bb_update(s))

            # Side chains use matrix frames (as AF2) with translations scaled to Angstrom.
            backbone = Rigid(
                Rotation(rot_mats=rigids.get_rots().get_rot_mats()), rigids.get_trans()
            )
            backbone = backbone.scale_translation(cfg.trans_scale_factor)
            unnormalized_angles, angles = self.angle_resnet(s, s_initial)
            all_frames = torsion_angles_to_frames(backbone, angles, aatype, self.default_frames)
            positions = frames_and_literature_positions_to_atom14_pos(
                all_frames,
                aatype,
                self.default_frames,
                self.group_idx,
                self.atom_mask,
                self.lit_positions,
            )
            block = {
                "frames": rigids.scale_translation(cfg.trans_scale_factor).to_tensor_7(),
                "sidechain_frames": all_frames.to_tensor_4x4(),
                "unnormalized_angles": unnormalized_angles,
                "angles": angles,
                "positions": positions,
                "states": s,
            }
            for key, value in block.items():
                outputs.setdefault(key, []).append(value)
            # Rotation gradients do not flow between blocks (AF2 Alg. 20 line 20).
            rigids = rigids.stop_rot_gradient()

        result = {key: torch.stack(values) for key, values in outputs.items()}
        result["single"] = s
        return result


__all__ = [
    "AngleResnet",
    "AngleResnetBlock",
    "BackboneUpdate",
    "InvariantPointAttention",
    "Linear",
    "StructureModule",
    "StructureModuleTransition",
    "StructureModuleTransitionLayer",
]
