"""Rigid transformations (rotation + translation) for the structure module.

A `Rigid` is a batch of proper rigid motions x -> R x + t, stored as a `Rotation` (a unit
quaternion or a 3x3 matrix, whichever it was built from) and a translation `[*, 3]`. The
structure module keeps its backbone frames as quaternions (AF2 supplement Alg. 23: the update
is a quaternion (1, b, c, d), normalised) and converts to matrices for the side-chain frames,
as AlphaFold2, openfold and ESMFold do.

Precision: frames are at least fp32. Half-precision inputs are promoted on construction (the
point algebra of IPA and the frame composition run in fp32 under a bf16 model, as in HF's
port); float64 stays float64 so gradchecks work. Products are written as elementwise
multiply-and-sum, not matmul, so autocast never lowers them to half precision.

Quaternions are (w, x, y, z) = (a, b, c, d), scalar first.

Example:
    >>> import torch
    >>> r = Rigid.identity((2, 5))                    # [B=2, L=5] identity frames
    >>> q_update = torch.zeros(2, 5, 6)
    >>> r.compose_q_update_vec(q_update).to_tensor_7().shape
    torch.Size([2, 5, 7])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _frame_dtype(dtype: torch.dtype) -> torch.dtype:
    """Frames are at least fp32 (bf16/fp16 are promoted, float64 is kept)."""
    return torch.promote_types(dtype, torch.float32)


def rot_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[*, 3, 3] x [*, 3, 3] -> [*, 3, 3] matrix product, autocast-proof."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(dim=-2)


def rot_vec_mul(r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[*, 3, 3] x [*, 3] -> [*, 3]: rotate vectors, autocast-proof."""
    return (r * v[..., None, :]).sum(dim=-1)


def quat_to_rot(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [*, 4] (w, x, y, z) -> rotation matrices [*, 3, 3]."""
    a, b, c, d = q.unbind(dim=-1)
    rows = [
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def rot_to_quat(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [*, 3, 3] -> unit quaternions [*, 4] (sign arbitrary).

    The quaternion is the eigenvector of the largest eigenvalue of Bar-Itzhack's symmetric 4x4
    matrix K (J. Guid. Control Dyn. 2000), which is robust for every rotation.
    """
    (xx, xy, xz), (yx, yy, yz), (zx, zy, zz) = (r[..., i, :].unbind(-1) for i in range(3))
    k = [
        [xx + yy + zz, zy - yz, xz - zx, yx - xy],
        [zy - yz, xx - yy - zz, xy + yx, xz + zx],
        [xz - zx, xy + yx, yy - xx - zz, yz + zy],
        [yx - xy, xz + zx, yz + zy, zz - xx - yy],
    ]
    k = torch.stack([torch.stack(row, dim=-1) for row in k], dim=-2) / 3.0
    _, vectors = torch.linalg.eigh(k)
    return vectors[..., -1]


def quat_multiply_by_vec(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Hamilton product q * (0, v): quaternions [*, 4], pure vectors [*, 3] -> [*, 4]."""
    a, b, c, d = q.unbind(dim=-1)
    x, y, z = v.unbind(dim=-1)
    return torch.stack(
        [
            -b * x - c * y - d * z,
            a * x + c * z - d * y,
            a * y - b * z + d * x,
            a * z + b * y - c * x,
        ],
        dim=-1,
    )


class Rotation:
    """A batch of 3D rotations with shape `[*]`, stored as quaternions `[*, 4]` or matrices `[*, 3, 3]`.

    Exactly one of `rot_mats` / `quats` is given. Quaternions are normalised unless
    `normalize_quats=False` (then they must already be unit).
    """

    def __init__(
        self,
        rot_mats: torch.Tensor | None = None,
        quats: torch.Tensor | None = None,
        normalize_quats: bool = True,
    ) -> None:
        if (rot_mats is None) == (quats is None):
            raise ValueError("Rotation: give exactly one of rot_mats and quats")
        if rot_mats is not None:
            if rot_mats.shape[-2:] != (3, 3):
                raise ValueError(
                    f"Rotation: rot_mats must be [*, 3, 3], got {tuple(rot_mats.shape)}"
                )
            rot_mats = rot_mats.to(_frame_dtype(rot_mats.dtype))
        if quats is not None:
            if quats.shape[-1] != 4:
                raise ValueError(f"Rotation: quats must be [*, 4], got {tuple(quats.shape)}")
            quats = quats.to(_frame_dtype(quats.dtype))
            if normalize_quats:
                quats = quats / torch.linalg.norm(quats, dim=-1, keepdim=True)
        self._rot_mats = rot_mats
        self._quats = quats

    @staticmethod
    def identity(
        shape: Sequence[int],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        fmt: str = "quat",
    ) -> Rotation:
        """Identity rotations of batch shape `shape`, as quaternions (`fmt="quat"`) or matrices."""
        dtype = _frame_dtype(dtype or torch.float32)
        if fmt == "quat":
            quats = torch.zeros(*shape, 4, dtype=dtype, device=device)
            quats[..., 0] = 1.0
            return Rotation(quats=quats, normalize_quats=False)
        if fmt == "rot_mat":
            eye = torch.eye(3, dtype=dtype, device=device)
            return Rotation(rot_mats=eye.expand(*shape, 3, 3).contiguous())
        raise ValueError(f"Rotation.identity: fmt must be 'quat' or 'rot_mat', got {fmt!r}")

    # --- tensor-like behaviour over the batch shape ---------------------------------------------

    @property
    def shape(self) -> torch.Size:
        if self._rot_mats is not None:
            return self._rot_mats.shape[:-2]
        return self._quats.shape[:-1]

    @property
    def dtype(self) -> torch.dtype:
        return (self._rot_mats if self._rot_mats is not None else self._quats).dtype

    @property
    def device(self) -> torch.device:
        return (self._rot_mats if self._rot_mats is not None else self._quats).device

    def __getitem__(self, index: Any) -> Rotation:
        index = index if isinstance(index, tuple) else (index,)
        if self._rot_mats is not None:
            return Rotation(rot_mats=self._rot_mats[index + (slice(None), slice(None))])
        return Rotation(quats=self._quats[index + (slice(None),)], normalize_quats=False)

    def unsqueeze(self, dim: int) -> Rotation:
        """Insert a batch dimension (`dim` counts over the batch shape only)."""
        if dim < 0:
            dim += len(self.shape) + 1
        return self[(slice(None),) * dim + (None,)]

    def detach(self) -> Rotation:
        if self._rot_mats is not None:
            return Rotation(rot_mats=self._rot_mats.detach())
        return Rotation(quats=self._quats.detach(), normalize_quats=False)

    @staticmethod
    def cat(rotations: Sequence[Rotation], dim: int) -> Rotation:
        """Concatenate along batch dimension `dim` (as matrices)."""
        dim = dim if dim >= 0 else dim - 2
        return Rotation(rot_mats=torch.cat([r.get_rot_mats() for r in rotations], dim=dim))

    # --- algebra ---------------------------------------------------------------------------------

    def get_rot_mats(self) -> torch.Tensor:
        """[*, 3, 3] rotation matrices."""
        return self._rot_mats if self._rot_mats is not None else quat_to_rot(self._quats)

    def get_quats(self) -> torch.Tensor:
        """[*, 4] unit quaternions (from an eigen-decomposition when stored as matrices)."""
        return self._quats if self._quats is not None else rot_to_quat(self._rot_mats)

    def compose_q_update_vec(self, q_update_vec: torch.Tensor) -> Rotation:
        """self * (1, b, c, d) / |.|: the AF2 backbone update (Alg. 23 lines 2-3), `[*, 3]`."""
        q = self.get_quats()
        return Rotation(quats=q + quat_multiply_by_vec(q, q_update_vec))

    def compose_r(self, other: Rotation) -> Rotation:
        """Matrix product self * other."""
        return Rotation(rot_mats=rot_matmul(self.get_rot_mats(), other.get_rot_mats()))

    def apply(self, pts: torch.Tensor) -> torch.Tensor:
        """Rotate points `[*, 3]` (broadcast against the batch shape)."""
        return rot_vec_mul(self.get_rot_mats(), pts)

    def invert_apply(self, pts: torch.Tensor) -> torch.Tensor:
        """Apply the inverse rotation R^T to points `[*, 3]`."""
        return rot_vec_mul(self.get_rot_mats().transpose(-1, -2), pts)

    def invert(self) -> Rotation:
        if self._rot_mats is not None:
            return Rotation(rot_mats=self._rot_mats.transpose(-1, -2))
        conj = self._quats * self._quats.new_tensor([1.0, -1.0, -1.0, -1.0])
        return Rotation(quats=conj)


class Rigid:
    """A batch of rigid motions x -> R x + t with batch shape `[*]` (`Rotation` + `[*, 3]`)."""

    def __init__(self, rots: Rotation | None, trans: torch.Tensor | None) -> None:
        if rots is None and trans is None:
            raise ValueError("Rigid: give at least one of rots and trans")
        if rots is None:
            rots = Rotation.identity(trans.shape[:-1], trans.dtype, trans.device)
        if trans is None:
            trans = torch.zeros(*rots.shape, 3, dtype=rots.dtype, device=rots.device)
        if rots.shape != trans.shape[:-1]:
            raise ValueError(
                f"Rigid: rotation batch shape {tuple(rots.shape)} does not match translation "
                f"shape {tuple(trans.shape)}"
            )
        self._rots = rots
        self._trans = trans.to(_frame_dtype(trans.dtype))

    @staticmethod
    def identity(
        shape: Sequence[int],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        fmt: str = "quat",
    ) -> Rigid:
        """Identity motions of batch shape `shape`."""
        rots = Rotation.identity(shape, dtype, device, fmt=fmt)
        return Rigid(rots, torch.zeros(*shape, 3, dtype=rots.dtype, device=device))

    @property
    def shape(self) -> torch.Size:
        return self._trans.shape[:-1]

    @property
    def device(self) -> torch.device:
        return self._trans.device

    @property
    def dtype(self) -> torch.dtype:
        return self._trans.dtype

    def get_rots(self) -> Rotation:
        return self._rots

    def get_trans(self) -> torch.Tensor:
        return self._trans

    def __getitem__(self, index: Any) -> Rigid:
        index = index if isinstance(index, tuple) else (index,)
        return Rigid(self._rots[index], self._trans[index + (slice(None),)])

    def unsqueeze(self, dim: int) -> Rigid:
        if dim < 0:
            dim += len(self.shape) + 1
        return self[(slice(None),) * dim + (None,)]

    @staticmethod
    def cat(rigids: Sequence[Rigid], dim: int) -> Rigid:
        """Concatenate along batch dimension `dim`."""
        rots = Rotation.cat([r._rots for r in rigids], dim)
        trans = torch.cat([r._trans for r in rigids], dim=dim if dim >= 0 else dim - 1)
        return Rigid(rots, trans)

    # --- algebra ---------------------------------------------------------------------------------

    def compose(self, other: Rigid) -> Rigid:
        """self o other: x -> R1 (R2 x + t2) + t1."""
        return Rigid(
            self._rots.compose_r(other._rots), self._rots.apply(other._trans) + self._trans
        )

    def compose_q_update_vec(self, update: torch.Tensor) -> Rigid:
        """Compose with an update `[*, 6]` = quaternion vector part (b, c, d) and translation.

        AF2 Alg. 23: T_i <- T_i o (normalise(1, b, c, d), t); the translation is expressed in the
        current local frame.
        """
        q_vec, t_vec = update[..., :3], update[..., 3:]
        return Rigid(self._rots.compose_q_update_vec(q_vec), self._trans + self._rots.apply(t_vec))

    def apply(self, pts: torch.Tensor) -> torch.Tensor:
        """Map points `[*, 3]` from the local frames to the global frame."""
        return self._rots.apply(pts) + self._trans

    def invert_apply(self, pts: torch.Tensor) -> torch.Tensor:
        """Map points `[*, 3]` from the global frame into the local frames."""
        return self._rots.invert_apply(pts - self._trans)

    def invert(self) -> Rigid:
        inv = self._rots.invert()
        return Rigid(inv, -inv.apply(self._trans))

    def scale_translation(self, factor: float) -> Rigid:
        return Rigid(self._rots, self._trans * factor)

    def stop_rot_gradient(self) -> Rigid:
        """Detach the rotation (AF2 Alg. 20 line 20); the translation keeps its gradient."""
        return Rigid(self._rots.detach(), self._trans)

    # --- tensor formats --------------------------------------------------------------------------

    def to_tensor_4x4(self) -> torch.Tensor:
        """[*, 4, 4] homogeneous matrices."""
        out = self._trans.new_zeros(*self.shape, 4, 4)
        out[..., :3, :3] = self._rots.get_rot_mats()
        out[..., :3, 3] = self._trans
        out[..., 3, 3] = 1.0
        return out

    @staticmethod
    def from_tensor_4x4(t: torch.Tensor) -> Rigid:
        """From homogeneous matrices `[*, 4, 4]` (the last row is ignored)."""
        if t.shape[-2:] != (4, 4):
            raise ValueError(f"Rigid.from_tensor_4x4: expected [*, 4, 4], got {tuple(t.shape)}")
        return Rigid(Rotation(rot_mats=t[..., :3, :3]), t[..., :3, 3])

    def to_tensor_7(self) -> torch.Tensor:
        """[*, 7]: unit quaternion (w, x, y, z) then translation."""
        return torch.cat([self._rots.get_quats(), self._trans], dim=-1)

    @staticmethod
    def from_tensor_7(t: torch.Tensor, normalize_quats: bool = False) -> Rigid:
        if t.shape[-1] != 7:
            raise ValueError(f"Rigid.from_tensor_7: expected [*, 7], got {tuple(t.shape)}")
        return Rigid(Rotation(quats=t[..., :4], normalize_quats=normalize_quats), t[..., 4:])

    @staticmethod
    def from_3_points(
        p_neg_x_axis: torch.Tensor,
        origin: torch.Tensor,
        p_xy_plane: torch.Tensor,
        eps: float = 1e-8,
    ) -> Rigid:
        """Frames from three points `[*, 3]` by Gram-Schmidt (AF2 Alg. 21, "rigidFrom3Points").

        x points from `p_neg_x_axis` to `origin`; `p_xy_plane` lies in the xy-plane, y >= 0.
        """
        e0 = origin - p_neg_x_axis
        e0 = e0 / torch.sqrt((e0 * e0).sum(-1, keepdim=True) + eps)
        e1 = p_xy_plane - origin
        e1 = e1 - (e0 * e1).sum(-1, keepdim=True) * e0
        e1 = e1 / torch.sqrt((e1 * e1).sum(-1, keepdim=True) + eps)
        e2 = torch.linalg.cross(e0, e1, dim=-1)
        return Rigid(Rotation(rot_mats=torch.stack([e0, e1, e2], dim=-1)), origin)


__all__ = [
    "Rigid",
    "Rotation",
    "quat_multiply_by_vec",
    "quat_to_rot",
    "rot_matmul",
    "rot_to_quat",
    "rot_vec_mul",
]
