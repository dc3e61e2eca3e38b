"""ESMFold, plain PyTorch: `EsmForProteinFolding` with transformers' interface and key names.

Pipeline (Lin et al. 2023; transformers `modeling_esmfold.py` for names and conventions):

1. Stem: residues in AlphaFold2 order (`ARNDCQEGHILKMFPSTWYV`, X = 20) are mapped to ESM-2
   token ids through the `af2_to_esm` buffer (index 0 = padding), wrapped in `<cls>` ... `<eos>`
   and encoded by the ESM-2 language model (`esm`, the reference `EsmModel`), keeping all
   num_layers + 1 hidden states.
2. Trunk input: s_0 = esm_s_mlp(sum_l softmax(esm_s_combine)_l * h_l) + embedding(aatype);
   z_0 = 0. `masking_pattern` replaces masked residues by `<mask>` in the stem and by the
   embedding's mask index (22), as transformers does (fair-esm masks only the stem input).
3. `trunk` (`EsmFoldingTrunk`): blocks, recycling, structure module.
4. Heads: distogram (64 bins, symmetrised), pTM / PAE (64 bins up to 31 A), pLDDT (50 bins per
   atom37 atom, on the 0-1 scale as transformers; PDB B-factors are 0-100) and the AA head.

Precision: the stem runs without gradients. With `esmfold_config.fp16_esm` on CUDA it runs
under fp16 autocast (transformers casts the stem's weights to fp16 instead; autocast keeps
LayerNorm and softmax in fp32). On the CPU it always runs in the parameters' dtype (fp32).

Sequences in, structures out (`infer`, `infer_records`, `infer_pdb(s)`, multimer encoding, the
retry at smaller chunk sizes after an out-of-memory error) come from
`esmkernels.reference.esmfold.inference`, a mixin of the model.

Padded batches are exact: every per-sequence output (positions, pLDDT, pTM, PAE) of a sequence
is the same alone or padded in a batch; pTM uses each sequence's own length and residues
(transformers computes one pTM over the whole padded batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from esmkernels.core.configuration import EsmConfig
from esmkernels.core.modeling_utils import PreTrainedMixin
from esmkernels.core.outputs import ModelOutput
from esmkernels.reference.esm import EsmModel
from esmkernels.reference.esmfold import confidence, geometry
from esmkernels.reference.esmfold import residue_constants as rc
from esmkernels.reference.esmfold.inference import FoldingInference
from esmkernels.reference.esmfold.trunk import EsmFoldingTrunk, num_trunk_iterations
from esmkernels.reference.esmfold.trunk_functional import chunk_rows

DISTOGRAM_BINS = 64
LDDT_BINS = 50
PAE_MAX_BIN = 31
NUM_RESTYPES = 20  # AlphaFold2 residue types; X = 20
N_TOKENS_EMBED = NUM_RESTYPES + 3  # 20 residues, X, the padding row 0 and the mask token
MASK_IDX = N_TOKENS_EMBED - 1
OUTPUT_MODES = ("full", "lean")
# Structure-module fields every output mode returns.
_STRUCTURE_FIELDS = (
    "frames", "sidechain_frames", "unnormalized_angles", "angles", "positions", "states", "s_s",
)  # fmt: skip


def check_outputs(outputs: str) -> str:
    """`outputs` validated: "full" or "lean" (see `EsmForProteinFolding.forward`)."""
    if outputs not in OUTPUT_MODES:
        raise ValueError(f"outputs={outputs!r} is not one of {OUTPUT_MODES}")
    return outputs


@dataclass(eq=False)
class EsmForProteinFoldingOutput(ModelOutput):
    """Output of `EsmForProteinFolding` (transformers' fields, in transformers' order).

    S = structure-module blocks, B = batch, L = residues.

    Attributes:
        frames: [S, B, L, 7] backbone frames (quaternion, translation in A).
        sidechain_frames: [S, B, L, 8, 4, 4] rigid groups.
        unnormalized_angles, angles: [S, B, L, 7, 2] torsions (sin, cos).
        positions: [S, B, L, 14, 3] atom14 coordinates in A; `positions[-1]` is the prediction.
        states: [S, B, L, C_sm] structure-module single states.
        s_s: [B, L, C_s] final trunk sequence state. s_z: [B, L, L, C_z] pair state.
        distogram_logits: [B, L, L, 64]. lm_logits: [B, L, 23].
        aatype: [B, L] input residue types (AlphaFold2 order).
        atom14_atom_exists: [B, L, 14]; residx_atom14_to_atom37: [B, L, 14];
        residx_atom37_to_atom14: [B, L, 37]; atom37_atom_exists: [B, L, 37] (padding zeroed).
        residue_index: [B, L] position ids.
        lddt_head: [S, B, L, 37, 50] pLDDT logits. plddt: [B, L, 37] in [0, 1].
        ptm_logits: [B, L, L, 64]. ptm: [B] predicted TM-score, per sequence.
        aligned_confidence_probs: [B, L, L, 64]. predicted_aligned_error: [B, L, L] in A.
        max_predicted_aligned_error: the largest PAE bin centre (31.75 A).
        chain_index: [B, L] chain of each residue (-1 for padding); set by `infer` only.
        mean_plddt: [B] mean pLDDT over the written atoms (0-1 scale); set by `infer` only.
    """

    frames: torch.Tensor | None = None
    sidechain_frames: torch.Tensor | None = None
    unnormalized_angles: torch.Tensor | None = None
    angles: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    states: torch.Tensor | None = None
    s_s: torch.Tensor | None = None
    s_z: torch.Tensor | None = None
    distogram_logits: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None
    aatype: torch.Tensor | None = None
    atom14_atom_exists: torch.Tensor | None = None
    residx_atom14_to_atom37: torch.Tensor | None = None
    residx_atom37_to_atom14: torch.Tensor | None = None
    atom37_atom_exists: torch.Tensor | None = None
    residue_index: torch.Tensor | None = None
    lddt_head: torch.Tensor | None = None
    plddt: torch.Tensor | None = None
    ptm_logits: torch.Tensor | None = None
    ptm: torch.Tensor | None = None
    aligned_confidence_probs: torch.Tensor | None = None
    predicted_aligned_error: torch.Tensor | None = None
    max_predicted_aligned_error: torch.Tensor | None = None
    chain_index: torch.Tensor | None = None
    mean_plddt: torch.Tensor | None = None

    # Field layouts, for `select`: [S, B, L, ...] stacked over structure blocks, [B, L, L, ...]
    # pairs, [B] per sequence; the rest are [B, L, ...] (max_predicted_aligned_error is a scalar).
    _STACKED = ("frames", "sidechain_frames", "unnormalized_angles", "angles", "positions",
                "states", "lddt_head")  # fmt: skip
    _PAIRS = ("s_z", "distogram_logits", "ptm_logits", "aligned_confidence_probs",
              "predicted_aligned_error")  # fmt: skip
    _PER_SEQUENCE = ("ptm", "mean_plddt")

    def select(self, index: int, length: int | None = None) -> EsmForProteinFoldingOutput:
        """The output of batch item `index` alone (batch 1), cut to its first `length` residues."""
        n = slice(None) if length is None else slice(0, length)
        fields = {}
        for name in self.__dataclass_fields__:
            t = getattr(self, name)
            if t is None or name == "max_predicted_aligned_error":
                fields[name] = t
            elif name in self._STACKED:
                fields[name] = t[:, index : index + 1, n]
            elif name in self._PAIRS:
                fields[name] = t[index : index + 1, n, n]
            elif name in self._PER_SEQUENCE:
                fields[name] = t[index : index + 1]
            else:
                fields[name] = t[index : index + 1, n]
        return type(self)(**fields)


class EsmForProteinFolding(PreTrainedMixin, FoldingInference, nn.Module):
    """ESMFold: ESM-2 stem, folding trunk, structure module and confidence heads.

    Keys are transformers' (`esm.*`, `esm_s_combine`, `esm_s_mlp.*`, `embedding.*`, `trunk.*`,
    `distogram_head.*`, `ptm_head.*`, `lm_head.*`, `lddt_head.*`, buffer `af2_to_esm`), so a
    transformers `save_pretrained` directory (the published `facebook/esmfold_v1`) loads with
    `from_pretrained` unchanged. fair-esm's `esmfold_3B_v1.pt` holds the trunk and heads only;
    its ESM-2 3B stem comes from its own checkpoint, passed as `stem=` (any path or Hub id
    `load_checkpoint` reads); without it loading raises unless `strict=False`.

    Example:
        >>> model = EsmForProteinFolding.from_pretrained("facebook/esmfold_v1")  # doctest: +SKIP
        >>> model = EsmForProteinFolding.from_pretrained(  # doctest: +SKIP
        ...     "esmfold_3B_v1.pt", stem="esm2_t36_3B_UR50D.pt")
        >>> pdb_text = model.infer_pdb("MKTVRQERLKSIVRILERSKEPVSGAQ")  # doctest: +SKIP
        >>> out = model.infer(["MKTVRQ", "AAAA:GGGG"])  # multimer: chains split by ":"  # doctest: +SKIP
        >>> out.positions[-1].shape, out.plddt.shape, out.ptm.shape  # doctest: +SKIP
    """

    config_class: ClassVar[type] = EsmConfig
    base_model_prefix: ClassVar[str] = "esm"
    # Trunk op namespace (`triangle_multiplicative_update`, `axial_attention`); None = reference.
    _trunk_ops: ClassVar[Any] = None
    # The ESM-2 stem class (the fast model swaps in its kernel EsmModel; same keys).
    stem_cls: ClassVar[type[nn.Module]] = EsmModel
    # The distogram / pTM / pLDDT / AA heads are part of the pretrained model: never fresh.
    _init_missing_heads: ClassVar[bool] = False
    # `af2_to_esm` is a constant of the vocabulary (built in __init__); a file may omit it.
    _ignore_missing: ClassVar[tuple[str, ...]] = (*PreTrainedMixin._ignore_missing, r"^af2_to_esm$")

    def __init__(self, config: EsmConfig):
        super().__init__()
        if not isinstance(config, EsmConfig):
            raise TypeError(
                f"EsmForProteinFolding: config must be an EsmConfig, got {type(config).__name__}"
            )
        if not config.is_folding_model or config.esmfold_config is None:
            raise ValueError(
                "EsmForProteinFolding: config is not an ESMFold configuration "
                "(is_folding_model=False or no esmfold_config); this is a language-model config"
            )
        self.config = config
        fold = config.esmfold_config
        trunk_config = fold.trunk
        c_s, c_z = trunk_config.sequence_state_dim, trunk_config.pairwise_state_dim

        self.distogram_bins = DISTOGRAM_BINS
        self.esm = self.stem_cls(config, add_pooling_layer=False)
        self.esm.requires_grad_(False)
        self.esm_feats = config.hidden_size
        self.esm_attns = config.num_hidden_layers * config.num_attention_heads
        self.esm_layers = config.num_hidden_layers
        self.register_buffer("af2_to_esm", af2_to_esm_indices(config.vocab_list))
        self.esm_s_combine = nn.Parameter(torch.zeros(self.esm_layers + 1))
        self.esm_s_mlp = nn.Sequential(
            nn.LayerNorm(self.esm_feats),
            nn.Linear(self.esm_feats, c_s),
            nn.ReLU(),
            nn.Linear(c_s, c_s),
        )

        self.n_tokens_embed = N_TOKENS_EMBED
        self.pad_idx = 0
        self.unk_idx = N_TOKENS_EMBED - 2
        self.mask_idx = MASK_IDX
        vocab = list(config.vocab_list)
        self.esm_dict_cls_idx = vocab.index("<cls>")
        self.esm_dict_mask_idx = vocab.index("<mask>")
        self.esm_dict_eos_idx = vocab.index("<eos>")
        self.esm_dict_padding_idx = vocab.index("<pad>")
        if fold.embed_aa:
            self.embedding = nn.Embedding(N_TOKENS_EMBED, c_s, padding_idx=0)

        self.trunk = EsmFoldingTrunk(trunk_config, ops=self._trunk_ops)

        self.distogram_head = nn.Linear(c_z, DISTOGRAM_BINS)
        self.ptm_head = nn.Linear(c_z, DISTOGRAM_BINS)
        self.lm_head = nn.Linear(c_s, N_TOKENS_EMBED)
        self.lddt_bins = LDDT_BINS
        sm_dim = trunk_config.structure_module.sequence_dim
        hid = fold.lddt_head_hid_dim
        self.lddt_head = nn.Sequential(
            nn.LayerNorm(sm_dim),
            nn.Linear(sm_dim, hid),
            nn.Linear(hid, hid),
            nn.Linear(hid, 37 * LDDT_BINS),
        )
        # The chunk size the last forward ran with (None: before any, or unchunked); after an
        # out-of-memory retry it differs from the setting (see `inference`).
        self.last_chunk_size: int | None = None
        self.post_init()

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------

    def _fit_prefix(self, state_dict: dict[str, torch.Tensor], expected) -> dict[str, torch.Tensor]:
        # ESMFold checkpoints are stored whole; an ESM-2 language-model checkpoint has no trunk.
        if not any(k.startswith("trunk.") for k in state_dict):
            raise ValueError(
                "EsmForProteinFolding: the checkpoint has no trunk.* weights, so it is not an "
                "ESMFold checkpoint (an ESM-2 language model loads with EsmModel / EsmForMaskedLM)"
            )
        return state_dict

    def set_chunk_size(self, chunk_size: int | None) -> None:
        """Compute every [L, L]-sized op (trunk, structure module's IPA, heads) in blocks of
        `chunk_size` rows (None: unchunked).

        Lowers peak memory on long sequences; the outputs are unchanged.
        """
        self.trunk.set_chunk_size(chunk_size)

    @property
    def chunk_size(self) -> int | None:
        """The chunk-size setting: rows per block, or None (unchunked); see `set_chunk_size`."""
        return self.trunk.chunk_size

    @property
    def device(self) -> torch.device:
        return self.esm_s_combine.device

    # ------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        masking_pattern: torch.Tensor | None = None,
        num_recycles: int | None = None,
        output_hidden_states: bool | None = False,
        outputs: str = "full",
    ) -> EsmForProteinFoldingOutput:
        """Predict structures for a padded batch of AlphaFold2-ordered residue ids.

        Args:
            input_ids: [B, L] int, AlphaFold2 residue ids (`ARNDCQEGHILKMFPSTWYV` = 0..19,
                X = 20); padding positions may hold anything in 0..20.
            attention_mask: [B, L] residue mask, 1 = keep (default all ones).
            position_ids: [B, L] int residue indices (default 0..L-1); chains of a multimer
                are separated by a jump in the indices.
            masking_pattern: [B, L], 1 = replace the residue by the mask token.
            num_recycles: recycles after the first pass; None = `trunk.max_recycles` passes
                in all (transformers' convention).
            output_hidden_states: accepted for transformers compatibility and ignored (as there).
            outputs: "full" (default: every field, transformers' drop-in) or "lean" (what a
                structure user needs: positions and the other structure-module fields, pLDDT,
                pTM and PAE [B, L, L] in the model's dtype; `s_z`, `distogram_logits`,
                `ptm_logits` and `aligned_confidence_probs` are None: the distogram head is
                skipped, pTM and PAE are streamed from the pair state in row blocks by
                `confidence.aligned_error_from_pair`, and the pair state is freed once they
                are done). Positions, pLDDT, pTM and PAE equal the full outputs'.

        Returns:
            `EsmForProteinFoldingOutput` (see its fields).

        Example:
            >>> out = model(torch.tensor([[10, 0, 11, 11]]))  # "LAKK"  # doctest: +SKIP
            >>> out.positions[-1].shape                        # [1, 4, 14, 3]  # doctest: +SKIP
        """
        aa, attention_mask, position_ids = self._check_inputs(
            input_ids, attention_mask, position_ids, masking_pattern, num_recycles
        )
        check_outputs(outputs)
        fold = self.config.esmfold_config
        B, L = aa.shape
        self.last_chunk_size = self.trunk.chunk_size

        esmaa = self.af2_idx_to_esm_idx(aa, attention_mask)
        masked_aa = aa
        if masking_pattern is not None:
            masked_aa, esmaa = self.bert_mask(aa, esmaa, attention_mask, masking_pattern)

        esm_s = self.compute_language_model_representations(esmaa)  # [B, L, layers + 1, C]
        esm_s = esm_s.to(self.esm_s_combine.dtype).detach()
        if fold.esm_ablate_sequence:
            esm_s = esm_s * 0
        weights = self.esm_s_combine.softmax(0)
        esm_s = (weights[None, :] @ esm_s).squeeze(2)  # [B, L, C]
        s_s_0 = self.esm_s_mlp(esm_s)
        del esm_s  # the stem's activations are dead from here on
        if fold.embed_aa:
            s_s_0 = s_s_0 + self.embedding(masked_aa)
        # z_0 = 0: a broadcast view of one zero, so no [B, L, L, C_z] tensor is allocated for it.
        s_z_0 = s_s_0.new_zeros(()).expand(B, L, L, fold.trunk.pairwise_state_dim)

        structure = self.trunk(
            s_s_0, s_z_0, aa, position_ids, attention_mask, no_recycles=num_recycles
        )
        return self._heads(structure, aa, attention_mask, position_ids, outputs)

    def _heads(
        self,
        structure: dict[str, torch.Tensor],
        aa: torch.Tensor,
        mask: torch.Tensor,
        position_ids: torch.Tensor,
        outputs: str = "full",
    ) -> EsmForProteinFoldingOutput:
        B, L = aa.shape
        chunk = self.trunk.chunk_size  # the [B, L, L, 64] heads run in blocks of rows too
        if outputs == "lean":
            return self._lean_heads(structure, aa, mask, position_ids, chunk)
        out = {k: structure[k] for k in (*_STRUCTURE_FIELDS, "s_z")}
        s_z = out["s_z"]
        out["distogram_logits"] = chunk_rows(  # symmetrised: (d_ij + d_ji) / 2
            self._distogram_rows, s_z, s_z.transpose(1, 2), chunk_size=chunk
        )
        out.update(self._residue_heads(out, aa, mask, position_ids))

        ptm_logits = chunk_rows(self.ptm_head, s_z, chunk_size=chunk)
        out["ptm_logits"] = ptm_logits
        residue_mask = mask.to(ptm_logits.dtype)
        bins = dict(max_bin=PAE_MAX_BIN, no_bins=DISTOGRAM_BINS, chunk_size=chunk)
        out["ptm"] = confidence.compute_tm(ptm_logits, residue_mask, **bins)
        out.update(confidence.compute_predicted_aligned_error(ptm_logits, residue_mask, **bins))
        return EsmForProteinFoldingOutput(**out)

    def _lean_heads(self, structure, aa, mask, position_ids, chunk) -> EsmForProteinFoldingOutput:
        """The "lean" outputs (see `forward`): no distogram, pTM and PAE streamed from s_z."""
        out = {k: structure[k] for k in _STRUCTURE_FIELDS}
        s_z = structure.pop("s_z")  # the caller's dict no longer holds the pair state
        out.update(self._residue_heads(out, aa, mask, position_ids))
        residue_mask = mask.to(s_z.dtype)
        out.update(
            confidence.aligned_error_from_pair(
                s_z,
                self.ptm_head,
                residue_mask,
                max_bin=PAE_MAX_BIN,
                no_bins=DISTOGRAM_BINS,
                chunk_size=chunk,
            )
        )
        del s_z  # freed here: nothing else refers to the pair state
        return EsmForProteinFoldingOutput(**out)

    def _residue_heads(self, out, aa, mask, position_ids) -> dict[str, torch.Tensor]:
        """The per-residue fields: AA logits, atom masks, pLDDT logits and pLDDT."""
        B, L = aa.shape
        atom_masks = geometry.make_atom14_masks(aa)
        keep = mask.unsqueeze(-1)
        states = out["states"]
        lddt_head = self.lddt_head(states).reshape(states.shape[0], B, L, -1, LDDT_BINS)
        return {
            "lm_logits": self.lm_head(out["s_s"]),
            "aatype": aa,
            "atom14_atom_exists": atom_masks["atom14_atom_exists"] * keep,
            "residx_atom14_to_atom37": atom_masks["residx_atom14_to_atom37"],
            "residx_atom37_to_atom14": atom_masks["residx_atom37_to_atom14"],
            "atom37_atom_exists": atom_masks["atom37_atom_exists"] * keep,
            "residue_index": position_ids,
            "lddt_head": lddt_head,
            "plddt": confidence.categorical_lddt(lddt_head[-1], bins=LDDT_BINS),
        }

    def _distogram_rows(self, z_ij: torch.Tensor, z_ji: torch.Tensor) -> torch.Tensor:
        return (self.distogram_head(z_ij) + self.distogram_head(z_ji)) / 2

    def _check_inputs(self, input_ids, attention_mask, position_ids, masking_pattern, num_recycles):
        if not torch.is_tensor(input_ids):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}"
            )
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        B, L = input_ids.shape
        if B == 0 or L == 0:
            raise ValueError(f"empty input: input_ids has shape {(B, L)}")
        device = input_ids.device
        aa = input_ids.long()
        for name, t in (
            ("attention_mask", attention_mask),
            ("position_ids", position_ids),
            ("masking_pattern", masking_pattern),
        ):
            if t is not None:
                if not torch.is_tensor(t):
                    raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
                if tuple(t.shape) != (B, L):
                    raise ValueError(f"{name} shape {tuple(t.shape)} != input_ids shape {(B, L)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(aa)
        bad = (aa < 0) | (aa > NUM_RESTYPES)
        if bad.any():
            b, i = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"input_ids[{b}, {i}] = {int(aa[b, i])} is not an AlphaFold2 residue id "
                f"(0..{NUM_RESTYPES}, X = {NUM_RESTYPES}); ESMFold takes AlphaFold2-ordered ids, "
                "not ESM tokenizer ids"
            )
        if position_ids is None:
            position_ids = torch.arange(L, device=device).expand(B, L)
        elif position_ids.is_floating_point() or position_ids.dtype == torch.bool:
            raise TypeError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
        num_trunk_iterations(num_recycles, self.config.esmfold_config.trunk.max_recycles)
        return aa, attention_mask, position_ids.long()

    def af2_idx_to_esm_idx(self, aa: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L] AlphaFold2 ids -> ESM token ids; masked-out positions become `<pad>`."""
        return self.af2_to_esm.to(aa.device)[(aa + 1).masked_fill(mask != 1, 0)]

    def bert_mask(
        self, aa: torch.Tensor, esmaa: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace residues where `pattern == 1` by the mask token in both vocabularies."""
        hit = pattern == 1
        return aa.masked_fill(hit, self.mask_idx), esmaa.masked_fill(hit, self.esm_dict_mask_idx)

    def compute_language_model_representations(self, esmaa: torch.Tensor) -> torch.Tensor:
        """[B, L] ESM ids (padding = `<pad>`) -> all hidden states [B, L, layers + 1, C].

        Adds `<cls>` in front and `<eos>` after each sequence's last residue (before its padding).
        """
        B, L = esmaa.shape
        if self.config.esmfold_config.bypass_lm:
            return esmaa.new_zeros(
                (B, L, self.esm_layers + 1, self.esm_feats), dtype=self.esm_s_combine.dtype
            )
        pad = self.esm_dict_padding_idx
        tokens = torch.cat(
            [esmaa.new_full((B, 1), self.esm_dict_cls_idx), esmaa, esmaa.new_full((B, 1), pad)],
            dim=1,
        )
        # The first padding slot of each row (after cls + residues) becomes <eos>.
        tokens[torch.arange(B, device=tokens.device), (tokens != pad).sum(1)] = (
            self.esm_dict_eos_idx
        )
        autocast = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.config.esmfold_config.fp16_esm and tokens.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            out = self.esm(
                tokens,
                attention_mask=(tokens != pad).long(),
                output_hidden_states=True,
                return_dict=True,
            )
        return torch.stack(out.hidden_states, dim=2)[:, 1:-1]


# ----------------------------------------------------------------------------------------------
# Sequence encoding
# ----------------------------------------------------------------------------------------------


def af2_to_esm_indices(vocab_list: Sequence[str]) -> torch.Tensor:
    """[22] int64: ESM token id of padding (slot 0) then of each AlphaFold2 residue type and X."""
    vocab = list(vocab_list)
    try:
        return torch.tensor([vocab.index("<pad>")] + [vocab.index(r) for r in rc.restypes_with_x])
    except ValueError as err:
        raise ValueError(f"ESMFold: vocab_list lacks a token it needs: {err}") from None


__all__ = [
    "OUTPUT_MODES",
    "EsmForProteinFolding",
    "EsmForProteinFoldingOutput",
    "af2_to_esm_indices",
    "check_outputs",
]
