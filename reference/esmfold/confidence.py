"""ESMFold confidence metrics from its heads' logits: pLDDT, pTM and predicted aligned error.

- `categorical_lddt`: expected lDDT under a categorical distribution over 50 equal bins on
  [0, 1] (AF2 supplement 1.9.6, Alg. 29). Returns the 0-1 scale, exactly like transformers'
  `EsmForProteinFolding` (its `plddt` output is 0-1; fair-esm's ESMFold multiplies by 100).
  Multiply by 100 for the conventional 0-100 pLDDT (what PDB B-factors hold).
- `compute_tm`: predicted TM-score (AF2 supplement 1.9.7, eq. 40), from the 64-bin aligned
  error head, bins of 0.5 A up to 31 A, last bin open.
- `compute_predicted_aligned_error`: expected aligned error per residue pair (same head).
- `aligned_error_from_pair`: pTM and PAE straight from the pair state and the head, in blocks of
  rows, for long folds: the `[*, N, N, no_bins]` logits and probabilities exist for one block at
  a time, and only the `[*, N, N]` PAE is kept (the lean outputs of `infer`).

Padding: a protein's scores never depend on the padding of its batch. `compute_tm` takes a
`residue_mask` and uses each sequence's own length N for the TM normaliser
d0(N) = 1.24 (max(N, 19) - 15)^(1/3) - 1.8 and for the average over aligned residues; it returns
one score per sequence, `[B]`. (HF's `compute_tm` uses the padded length for d0, averages over
padded positions too, and returns a single scalar: the maximum over the whole batch. For one
unpadded sequence the two agree; fair-esm slices each sequence to its length, which is what
the mask does here.)

Example:
    >>> import torch
    >>> logits = torch.randn(2, 7, 7, 64)
    >>> mask = torch.tensor([[1.0] * 7, [1.0] * 5 + [0.0] * 2])
    >>> compute_tm(logits, mask).shape
    torch.Size([2])
"""

from __future__ import annotations

import torch

from esmkernels.reference.esmfold.trunk_functional import chunk_rows


def categorical_lddt(logits: torch.Tensor, bins: int = 50) -> torch.Tensor:
    """Expected lDDT: softmax over `bins` equal bins on [0, 1], dotted with the bin centres.

    Args:
        logits: `[*, bins]` (ESMFold: `[B, N, 37, 50]`, one distribution per atom37 slot).
        bins: number of bins.

    Returns:
        `[*]` pLDDT on the 0-1 scale (HF's `plddt`).

    Example:
        >>> categorical_lddt(torch.zeros(3, 50))  # uniform: expected value 0.5
        tensor([0.5000, 0.5000, 0.5000])
    """
    if logits.shape[-1] != bins:
        raise ValueError(f"categorical_lddt: logits have {logits.shape[-1]} bins, expected {bins}")
    edges = torch.linspace(0.0, 1.0, bins + 1, device=logits.device, dtype=logits.dtype)
    centres = (edges[:-1] + edges[1:]) / 2
    return logits.softmax(dim=-1) @ centres


def _aligned_error_bin_centres(
    max_bin: int, no_bins: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Centres of the `no_bins` error bins: edges linspace(0, max_bin, no_bins - 1); the open
    last bin gets the centre one step beyond the last finite one. `[no_bins]`."""
    edges = torch.linspace(0, max_bin, steps=no_bins - 1, device=device, dtype=dtype)
    step = edges[1] - edges[0]
    centres = edges + step / 2
    return torch.cat([centres, (centres[-1] + step)[None]])


def _check_logits(
    logits: torch.Tensor, residue_mask: torch.Tensor | None, no_bins: int, where: str
):
    if logits.dim() < 3 or logits.shape[-3] != logits.shape[-2] or logits.shape[-1] != no_bins:
        raise ValueError(f"{where}: logits must be [*, N, N, {no_bins}], got {tuple(logits.shape)}")
    if residue_mask is not None and residue_mask.shape != logits.shape[:-2]:
        raise ValueError(
            f"{where}: residue_mask shape {tuple(residue_mask.shape)} != [*, N] "
            f"{tuple(logits.shape[:-2])}"
        )


def compute_tm(
    logits: torch.Tensor,
    residue_mask: torch.Tensor | None = None,
    max_bin: int = 31,
    no_bins: int = 64,
    eps: float = 1e-8,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Predicted TM-score per sequence (pTM).

    pTM = max_i (1/N) sum_j E[1 / (1 + (e_ij / d0(N))^2)], over real residues i, j of the
    sequence, with e_ij the aligned error of j in the frame of i and N the sequence's length.

    Args:
        logits: `[*, N, N, no_bins]` aligned-error logits (ESMFold's `ptm_logits`).
        residue_mask: `[*, N]`, 1 = real residue (all ones when None).
        max_bin, no_bins: bin layout of the head (ESMFold: 31, 64).
        eps: guards the division for fully padded sequences.
        chunk_size: alignment frames i per block (bounds the [*, N, N, no_bins] softmax).

    Returns:
        `[*]` pTM in [0, 1]; 0 for a sequence with no residues.
    """
    _check_logits(logits, residue_mask, no_bins, "compute_tm")
    if residue_mask is None:
        residue_mask = logits.new_ones(logits.shape[:-2])
    mask = residue_mask.to(logits.dtype)
    n = mask.sum(dim=-1, keepdim=True)  # [*, 1]
    d0 = 1.24 * (n.clamp(min=19) - 15) ** (1.0 / 3) - 1.8
    centres = _aligned_error_bin_centres(max_bin, no_bins, logits.device, logits.dtype)
    tm_per_bin = 1.0 / (1 + centres**2 / d0[..., None, :] ** 2)  # [*, 1, no_bins]

    def frames(logits_i: torch.Tensor, mask_i: torch.Tensor) -> torch.Tensor:
        """Alignment frames i: [*, I, N, no_bins], [*, I] -> masked scores [*, I]."""
        expected_tm = (logits_i.softmax(dim=-1) * tm_per_bin[..., None, :]).sum(-1)  # [*, I, N]
        per_alignment = (expected_tm * mask[..., None, :]).sum(-1) / (eps + n)  # [*, I]
        return per_alignment * mask_i

    # Padded alignment frames never win the max (scores are >= 0).
    scores = chunk_rows(frames, logits, mask, chunk_size=chunk_size, dim=logits.dim() - 3)
    return scores.amax(dim=-1)


def compute_predicted_aligned_error(
    logits: torch.Tensor,
    residue_mask: torch.Tensor | None = None,
    max_bin: int = 31,
    no_bins: int = 64,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Aligned-error distributions and their expectations (PAE).

    Args:
        logits: `[*, N, N, no_bins]` aligned-error logits.
        residue_mask: optional `[*, N]`, 1 = real residue; pairs that touch padding are zeroed.
        max_bin, no_bins: bin layout of the head (ESMFold: 31, 64).
        chunk_size: rows i per block (the outputs are whole; the temporaries are per block).

    Returns:
        dict with
        - `aligned_confidence_probs` `[*, N, N, no_bins]` softmax over bins
        - `predicted_aligned_error` `[*, N, N]` expected error (Angstrom) of residue j when
          aligned on residue i
        - `max_predicted_aligned_error` `[]` the largest representable error (the last bin's
          centre, 31.75 A for ESMFold)
    """
    _check_logits(logits, residue_mask, no_bins, "compute_predicted_aligned_error")
    mask = None if residue_mask is None else residue_mask.to(logits.dtype)

    def rows(logits_i: torch.Tensor, mask_i: torch.Tensor | None) -> torch.Tensor:
        probs = logits_i.softmax(dim=-1)  # [*, I, N, no_bins]
        if mask_i is not None:
            probs = probs * (mask_i[..., :, None] * mask[..., None, :])[..., None]
        return probs

    dim = logits.dim() - 3
    probs = chunk_rows(rows, logits, mask, chunk_size=chunk_size, dim=dim)
    centres = _aligned_error_bin_centres(max_bin, no_bins, logits.device, logits.dtype)
    expected = chunk_rows(lambda p: (p * centres).sum(-1), probs, chunk_size=chunk_size, dim=dim)
    return {
        "aligned_confidence_probs": probs,
        "predicted_aligned_error": expected,
        "max_predicted_aligned_error": centres[-1],
    }


def aligned_error_from_pair(
    s_z: torch.Tensor,
    head: torch.nn.Module,
    residue_mask: torch.Tensor,
    max_bin: int = 31,
    no_bins: int = 64,
    eps: float = 1e-8,
    chunk_size: int | None = None,
    pae_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """pTM and PAE from the pair state, one block of rows at a time (lean outputs).

    Equals `compute_tm(head(s_z), mask)` and the `predicted_aligned_error` of
    `compute_predicted_aligned_error(head(s_z), mask)` (both masked as there), without ever
    holding `head(s_z)` or its softmax for more than `chunk_size` rows: peak memory beyond the
    inputs is one block's `[B, I, N, no_bins]` logits plus the `[B, N, N]` PAE.

    Args:
        s_z: `[B, N, N, C_z]` final pair state.
        head: the aligned-error head (ESMFold's `ptm_head`, `C_z -> no_bins`).
        residue_mask: `[B, N]`, 1 = real residue.
        max_bin, no_bins, eps: as in `compute_tm`.
        chunk_size: rows i per block (None: one block).
        pae_dtype: dtype of the returned PAE (default: the logits' dtype).

    Returns:
        dict with `ptm` `[B]`, `predicted_aligned_error` `[B, N, N]` (Angstrom) and
        `max_predicted_aligned_error` `[]`.

    Example:
        >>> z, head = torch.randn(1, 9, 9, 8), torch.nn.Linear(8, 64)
        >>> lean = aligned_error_from_pair(z, head, torch.ones(1, 9), chunk_size=4)
        >>> torch.allclose(lean["ptm"], compute_tm(head(z), torch.ones(1, 9)))
        True
    """
    if s_z.dim() != 4 or s_z.shape[1] != s_z.shape[2]:
        raise ValueError(
            f"aligned_error_from_pair: s_z must be [B, N, N, C], got {tuple(s_z.shape)}"
        )
    if residue_mask.shape != s_z.shape[:2]:
        raise ValueError(
            f"aligned_error_from_pair: residue_mask shape {tuple(residue_mask.shape)} != "
            f"{tuple(s_z.shape[:2])}"
        )
    B, N = s_z.shape[:2]
    step = N if chunk_size is None else max(1, min(int(chunk_size), N))
    pae = None
    scores = []
    centres = mask = n = tm_per_bin = None
    for start in range(0, N, step):
        rows = min(step, N - start)
        logits = head(s_z[:, start : start + rows])  # [B, I, N, no_bins]
        if logits.shape[-1] != no_bins:
            raise ValueError(f"aligned_error_from_pair: the head gives {logits.shape[-1]} bins")
        if centres is None:
            centres = _aligned_error_bin_centres(max_bin, no_bins, logits.device, logits.dtype)
            mask = residue_mask.to(logits.dtype)
            n = mask.sum(dim=-1, keepdim=True)  # [B, 1]
            d0 = 1.24 * (n.clamp(min=19) - 15) ** (1.0 / 3) - 1.8
            tm_per_bin = 1.0 / (1 + centres**2 / d0[..., None, :] ** 2)  # [B, 1, no_bins]
            pae = logits.new_empty((B, N, N), dtype=pae_dtype or logits.dtype)
        probs = logits.softmax(dim=-1)
        del logits
        mask_i = mask[:, start : start + rows]
        pair = mask_i[:, :, None] * mask[:, None, :]  # [B, I, N]
        pae[:, start : start + rows] = ((probs * centres).sum(-1) * pair).to(pae.dtype)
        expected_tm = (probs * tm_per_bin[:, :, None, :]).sum(-1)  # [B, I, N]
        scores.append((expected_tm * mask[:, None, :]).sum(-1) / (eps + n) * mask_i)  # [B, I]
    return {
        "ptm": torch.cat(scores, dim=1).amax(dim=-1),
        "predicted_aligned_error": pae,
        "max_predicted_aligned_error": centres[-1],
    }


__all__ = [
    "aligned_error_from_pair",
    "categorical_lddt",
    "compute_predicted_aligned_error",
    "compute_tm",
]
