"""What a fold costs before it runs: parameter bytes and FLOPs from the configuration alone.

Both are closed-form in the configuration, so planning a FASTA of any size opens no weights and
builds no module (`esmkernels.jobs.plan`, `esmkernels fold --plan`).

`parameter_count(config)`: the `EsmForProteinFolding` parameters, module by module (ESM-2 stem,
trunk blocks, recycling embeddings, structure module, heads); a test checks it equals the count of
a model built on the meta device. Buffers (rotary frequencies, residue constants) are a few KiB
and counted too.

`predict_fold_flops(config, L, batch=, num_recycles=, outputs=)`: forward FLOPs, a multiply-add
counted as 2, of the matrix products (LayerNorms, softmax and element-wise ops are left out;
they are O(L^2 c_z) per op, under 5% of the total at c_z = 128). With T = L + 2 stem tokens,
d the stem width, f its feed-forward width, n its layers, c_s / c_z the trunk widths, H_s, H_z
their heads, N the trunk blocks, P the passes (num_recycles + 1):

    stem       n [2T (4 d^2 + 2 d f) + 4 T^2 d]
    per block  seq attention 2L (5 c_s^2) + 4 L^2 c_s + 2 L^2 c_z H_s; seq MLP 16 L c_s^2;
               seq->pair 2 L c_s c_z + 2 L^2 c_z^2; two triangle multiplications
               2 (12 L^2 c_z^2 + 2 L^3 c_z); two triangle attentions 2 (10 L^2 c_z^2 +
               2 L^2 c_z H_z + 4 L^3 c_z); pair transition 16 L^2 c_z^2
    structure  S blocks of IPA: 2 L^2 H (c + 3 P_qk) logits, 2 L^2 H (c + 3 P_v + c_z)
               outputs, 2 L^2 c_z H pair bias (per pass)
    heads      pTM head 2 L^2 c_z 64; full outputs add the symmetrised distogram 4 L^2 c_z 64

    FLOPs = batch [stem + P (N per_block + structure) + heads]

The L^3 c_z terms of the triangle ops (12 L^3 c_z per block) dominate beyond a few thousand
residues: esmfold_v1 with 4 passes is predicted at 5.0e14 FLOPs at L = 1,000 and 3.1e17 at
L = 10,000.

Example:
    >>> from esmkernels.models.fold_memory import esmfold_v1_config
    >>> cfg = esmfold_v1_config()
    >>> f"{predict_fold_flops(cfg, 1000):.2e}"
    '5.04e+14'
"""

from __future__ import annotations

from esmkernels.core.configuration import EsmConfig

DISTOGRAM_BINS = 64
LDDT_BINS = 50
N_TOKENS_EMBED = 23

__all__ = ["parameter_count", "predict_fold_flops"]


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def parameter_count(config: EsmConfig) -> tuple[int, int]:
    """(floating-point parameters and buffers, int64 buffers) of an `EsmForProteinFolding`."""
    fold = config.esmfold_config
    t = fold.trunk
    sm = t.structure_module
    d, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    layer = 4 * _linear(d, d) + 2 * d + _linear(d, f) + _linear(f, d) + 2 * d
    stem = config.vocab_size * d + n * layer + 2 * d  # embeddings, layers, final LayerNorm
    stem += _linear(n * config.num_attention_heads, 1)  # contact head
    if config.position_embedding_type == "rotary":
        stem += n * (d // config.num_attention_heads // 2)  # inv_freq buffers
    else:
        stem += (config.max_position_embeddings + config.pad_token_id + 1) * d
    c_s, c_z = t.sequence_state_dim, t.pairwise_state_dim
    h_s, h_z = c_s // t.sequence_head_width, c_z // t.pairwise_head_width
    block = 2 * c_s  # layernorm_1
    block += 2 * c_s + _linear(c_s, c_z) + _linear(c_z, c_z)  # sequence_to_pair
    block += 2 * c_z + _linear(c_z, h_s, bias=False)  # pair_to_sequence
    block += _linear(c_s, 3 * c_s, bias=False) + 2 * _linear(c_s, c_s)  # seq_attention
    block += 2 * (6 * _linear(c_z, c_z) + 4 * c_z)  # two triangle multiplications
    block += 2 * (2 * c_z + _linear(c_z, h_z, False) + 3 * c_z * c_z + 2 * _linear(c_z, c_z))
    block += 2 * c_s + _linear(c_s, 4 * c_s) + _linear(4 * c_s, c_s)  # mlp_seq
    block += 2 * c_z + _linear(c_z, 4 * c_z) + _linear(4 * c_z, c_z)  # mlp_pair
    bins = 2 * (t.position_bins if hasattr(t, "position_bins") else 32) + 2
    trunk = t.num_blocks * block + bins * c_z
    trunk += 2 * c_s + 2 * c_z + 15 * c_z  # recycle norms, recycle_disto
    trunk += _linear(c_s, sm.sequence_dim) + _linear(c_z, sm.pairwise_dim)  # trunk2sm, ...
    s, h, c, r = sm.sequence_dim, sm.num_heads_ipa, sm.ipa_dim, sm.resnet_dim
    pq, pv = sm.num_qk_points, sm.num_v_points
    ipa = h + _linear(s, h * c) + _linear(s, 2 * h * c) + _linear(s, h * pq * 3)
    ipa += _linear(s, h * (pq + pv) * 3) + _linear(sm.pairwise_dim, h)
    ipa += _linear(h * (sm.pairwise_dim + c + pv * 4), s)
    structure = 2 * s + 2 * sm.pairwise_dim + _linear(s, s) + ipa + 2 * s  # norms, in, ipa
    structure += sm.num_transition_layers * 3 * _linear(s, s) + 2 * s + _linear(s, 6)
    structure += 2 * _linear(s, r) + sm.num_resnet_blocks * 2 * _linear(r, r)
    structure += _linear(r, 2 * sm.num_angles)
    structure += 21 * 8 * 16 + 21 * 14 + 21 * 14 * 3  # residue-constant float buffers
    hid = fold.lddt_head_hid_dim
    heads = 2 * _linear(c_z, DISTOGRAM_BINS) + _linear(c_s, N_TOKENS_EMBED)
    heads += 2 * s + _linear(s, hid) + _linear(hid, hid) + _linear(hid, 37 * LDDT_BINS)
    trunk_in = (n + 1) + 2 * d + _linear(d, c_s) + _linear(c_s, c_s)
    trunk_in += N_TOKENS_EMBED * c_s if fold.embed_aa else 0
    return stem + trunk_in + trunk + structure + heads, 22 + 21 * 14


def predict_fold_flops(
    config: EsmConfig,
    length: int,
    *,
    batch: int = 1,
    num_recycles: int | None = None,
    outputs: str = "full",
) -> int:
    """Predicted forward FLOPs of one fold (the formula of the module docstring).

    Args:
        config: an ESMFold `EsmConfig`.
        length: residues L (the padded length of the batch).
        batch: sequences in the batch.
        num_recycles: recycles after the first pass (None: the trunk's `max_recycles` passes in
            all, as `forward`).
        outputs: "full" or "lean" (lean skips the distogram head).
    """
    if not isinstance(config, EsmConfig) or config.esmfold_config is None:
        raise TypeError(f"fold flops: config must be an ESMFold EsmConfig, got {config!r:.60}")
    for name, v in (("length", length), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"fold flops: {name}={v!r} must be a positive int")
    if outputs not in ("full", "lean"):
        raise ValueError(f"fold flops: outputs={outputs!r} is not 'full' or 'lean'")
    t = config.esmfold_config.trunk
    sm = t.structure_module
    if num_recycles is None:
        passes = t.max_recycles
    elif isinstance(num_recycles, bool) or not isinstance(num_recycles, int) or num_recycles < 0:
        raise ValueError(f"fold flops: num_recycles={num_recycles!r} must be an int >= 0")
    else:
        passes = num_recycles + 1
    L, T = length, length + 2
    d, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    stem = n * (2 * T * (4 * d * d + 2 * d * f) + 4 * T * T * d)
    c_s, c_z = t.sequence_state_dim, t.pairwise_state_dim
    h_s, h_z = c_s // t.sequence_head_width, c_z // t.pairwise_head_width
    L2, L3 = L * L, L**3
    block = 10 * L * c_s * c_s + 4 * L2 * c_s + 2 * L2 * c_z * h_s + 16 * L * c_s * c_s
    block += 2 * L * c_s * c_z + 2 * L2 * c_z * c_z
    block += 2 * (12 * L2 * c_z * c_z + 2 * L3 * c_z)
    block += 2 * (10 * L2 * c_z * c_z + 2 * L2 * c_z * h_z + 4 * L3 * c_z)
    block += 16 * L2 * c_z * c_z
    h, c = sm.num_heads_ipa, sm.ipa_dim
    ipa = 2 * L2 * h * (c + 3 * sm.num_qk_points) + 2 * L2 * h * (c + 3 * sm.num_v_points + c_z)
    structure = sm.num_blocks * (ipa + 2 * L2 * c_z * h)
    heads = 2 * L2 * c_z * DISTOGRAM_BINS * (1 if outputs == "lean" else 3)
    return int(batch * (stem + passes * (t.num_blocks * block + structure) + heads))
