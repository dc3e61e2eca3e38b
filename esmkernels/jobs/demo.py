"""The demo's job: two small random-weight checkpoints, the demo FASTA, and the check of the
fast models against the reference (`esmkernels demo` runs the real commands with them).

The checkpoints are real HF directories (config.json, model.safetensors, vocab.txt) written
from a fixed seed, so two runs write the same bytes: an ESM-2-style language model and an
ESMFold-style folding model. Their numbers are meaningless as biology.

Example:
    >>> lm_dir, fold_dir = make_checkpoints(Path("demo_out/checkpoints"))  # doctest: +SKIP
    >>> diff, t_ref, t_fast = compare_lm(lm_dir, ["MKTAYIAK"], "cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = [
    "MUTATIONS",
    "SEED",
    "compare_fold",
    "compare_lm",
    "demo_fasta",
    "make_checkpoints",
    "pick_mutations",
]

SEED = 0
MUTATIONS = "I44A,L8A,K48R,F4A:I44A"
STEM = dict(
    vocab_size=33,
    pad_token_id=1,
    mask_token_id=32,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    max_position_embeddings=1026,
    position_embedding_type="rotary",
    token_dropout=True,
    emb_layer_norm_before=False,
    layer_norm_eps=1e-5,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TRUNK = dict(
    num_blocks=2,
    sequence_state_dim=64,
    pairwise_state_dim=32,
    sequence_head_width=16,
    pairwise_head_width=16,
    position_bins=32,
    max_recycles=4,
    structure_module=dict(
        sequence_dim=64,
        pairwise_dim=32,
        ipa_dim=16,
        resnet_dim=32,
        num_heads_ipa=4,
        num_qk_points=4,
        num_v_points=8,
        num_blocks=2,
        dropout_rate=0.0,
    ),
)


def pick_mutations(sequence: str) -> str | None:
    """Mutations for the demo's score step that fit `sequence` (one chain): an alanine scan of
    up to three sites at a quarter, half and three quarters of its length (an alanine becomes a
    glycine) plus the double mutant of the first two, comma-joined; None when the chain has no
    standard residue to mutate.

    Example:
        >>> pick_mutations("MKTAYIAKQR")
        'T3A,I6A,K8A,T3A:I6A'
    """
    standard = [i for i, a in enumerate(sequence) if a in "ACDEFGHIKLMNPQRSTVWY"]
    if not standard:
        return None
    sites = sorted(
        {min(standard, key=lambda i: (abs(i - len(sequence) * f), i)) for f in (0.25, 0.5, 0.75)}
    )
    singles = [f"{sequence[i]}{i + 1}{'G' if sequence[i] == 'A' else 'A'}" for i in sites]
    return ",".join(singles + ([f"{singles[0]}:{singles[1]}"] if len(singles) > 1 else []))


def demo_fasta() -> Path:
    """examples/demo.fasta of a source checkout, else the copy installed with the package."""
    here = Path(__file__).resolve()
    for candidate in (
        here.parents[2] / "examples" / "demo.fasta",
        here.parents[1] / "data" / "demo.fasta",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("demo.fasta is missing from this installation")


def _perturb(model, seed: int) -> None:
    """Seeded noise on every weight: the reference init zeroes many residual branches, which
    would make a random model's outputs trivially constant."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def make_checkpoints(root: Path) -> tuple[Path, Path]:
    """The two random-weight HF checkpoints (written once; the same bytes every time)."""
    import torch

    from esmkernels.core.configuration import EsmConfig
    from esmkernels.core.tokenization import EsmTokenizer
    from esmkernels.reference.esm import EsmForMaskedLM
    from esmkernels.reference.esmfold.modeling import EsmForProteinFolding

    lm_dir, fold_dir = root / "esm2_demo_random_weights", root / "esmfold_demo_random_weights"
    if not (lm_dir / "model.safetensors").is_file():
        torch.manual_seed(SEED)
        lm = EsmForMaskedLM(EsmConfig(**STEM)).eval()
        _perturb(lm, SEED)
        lm.save_pretrained(lm_dir)
        EsmTokenizer().save_pretrained(lm_dir)
    if not (fold_dir / "model.safetensors").is_file():
        torch.manual_seed(SEED + 1)
        fold = dict(fp16_esm=False, lddt_head_hid_dim=32, trunk=TRUNK)
        model = EsmForProteinFolding(
            EsmConfig(**STEM, is_folding_model=True, esmfold_config=fold)
        ).eval()
        _perturb(model, SEED + 1)
        model.save_pretrained(fold_dir)
        EsmTokenizer().save_pretrained(fold_dir)
    return lm_dir, fold_dir


def _best_time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def compare_lm(lm_dir: Path, sequences: list[str], device) -> tuple[float, float, float]:
    """(largest |fast - reference| of the last hidden state, reference s, fast s) on a batch."""
    import torch

    from esmkernels.core.tokenization import EsmTokenizer
    from esmkernels.models.esm import EsmModel
    from esmkernels.reference.esm import EsmModel as RefEsmModel

    enc = EsmTokenizer()(sequences, padding=True, return_tensors="pt").to(device)
    fast = EsmModel.from_pretrained(lm_dir, device=device)
    slow = RefEsmModel.from_pretrained(lm_dir, device=device)
    with torch.inference_mode():
        a = fast(**enc).last_hidden_state
        b = slow(**enc).last_hidden_state
        keep = enc["attention_mask"].bool()
        diff = float((a[keep] - b[keep]).abs().max())
        t_ref = _best_time(lambda: slow(**enc))
        t_fast = _best_time(lambda: fast(**enc))
    return diff, t_ref, t_fast


def compare_fold(fold_dir: Path, sequence: str, device) -> tuple[float, float, float, float]:
    """(largest |fast - reference| atom position in A, of pLDDT, reference s, fast s)."""
    import torch

    from esmkernels.models.esmfold import EsmForProteinFolding
    from esmkernels.reference.esmfold.modeling import EsmForProteinFolding as RefFold

    fast = EsmForProteinFolding.from_pretrained(fold_dir, device=device)
    slow = RefFold.from_pretrained(fold_dir, device=device)
    with torch.inference_mode():
        a = fast.infer(sequence, num_recycles=1)
        b = slow.infer(sequence, num_recycles=1)
        pos = float((a.positions[-1] - b.positions[-1]).abs().max())
        plddt = float((a.plddt - b.plddt).abs().max()) * 100
        t_ref = _best_time(lambda: slow.infer(sequence, num_recycles=1), 2)
        t_fast = _best_time(lambda: fast.infer(sequence, num_recycles=1), 2)
    return pos, plddt, t_ref, t_fast
