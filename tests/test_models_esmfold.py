"""Fast `esmkernels.models.esmfold.EsmForProteinFolding` vs the reference ESMFold.

The fast model is the reference with the kernel stem and kernel trunk ops; with the same weights
it must give the same structure and scores, on the torch path and on the Triton kernels (run by
the interpreter on CPU).
"""

from __future__ import annotations

import copy
import pickle
from collections import Counter

import pytest
import torch

from esmkernels.core.configuration import EsmConfig
from esmkernels.models.esmfold import EsmForProteinFolding, KernelTrunkOps
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding as RefEsmForProteinFolding
from tests.test_esmfold_model import STEM, random_sequence
from tests.test_esmfold_trunk import one_torch_thread, randomize_, tiny_trunk_config  # noqa: F401
from tests.tolerances import MODEL_FP32

_REF: list[RefEsmForProteinFolding] = []


def tiny_model() -> RefEsmForProteinFolding:
    """Reference ESMFold whose stem head dim (16) the Triton attention kernel supports."""
    if not _REF:
        torch.manual_seed(0)
        fold = dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=tiny_trunk_config().to_dict())
        cfg = EsmConfig(
            **{**STEM, "num_attention_heads": 2}, is_folding_model=True, esmfold_config=fold
        )
        _REF.append(randomize_(RefEsmForProteinFolding(cfg), scale=0.5, seed=0).eval())
    return _REF[0]


def fast_copy(reference, backend):
    fast = EsmForProteinFolding(reference.config, backend=backend)
    fast.load_state_dict(reference.state_dict())
    return fast.eval()


FIELDS = ("positions", "plddt", "ptm", "distogram_logits", "s_z", "s_s", "predicted_aligned_error")


def assert_same_fold(got, want, real, msg=""):
    """Every field of FIELDS on real residues (padding is not part of the contract)."""
    pair = real[:, :, None] & real[:, None, :]
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        if name in ("s_z", "predicted_aligned_error", "distogram_logits"):
            a, b = a[pair], b[pair]
        elif name == "positions":  # [blocks, B, L, 14, 3]
            a, b = a[:, real], b[:, real]
        elif name != "ptm":
            a, b = a[real], b[real]
        torch.testing.assert_close(a, b, **MODEL_FP32, msg=f"{name} {msg}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("recycles", [0, 2])
def test_fast_matches_reference(backend, recycles):
    """A padded batch, chunk size "auto" (the default): positions, pLDDT, pTM, PAE, distogram."""
    reference = tiny_model()
    fast = fast_copy(reference, backend)
    assert isinstance(fast.trunk.blocks[0].tri_mul_out.ops.namespace, KernelTrunkOps)
    assert fast.chunk_size == "auto"
    seqs = [random_sequence(7, 1), random_sequence(4, 2)]
    with torch.no_grad():
        want = reference.infer(seqs, num_recycles=recycles)
        got = fast.infer(seqs, num_recycles=recycles)
    real = want.atom37_atom_exists[..., 1].bool()  # [B, L]: CA exists on real residues
    assert_same_fold(got, want, real, f"({backend}, {recycles} recycles)")
    if backend == "triton":  # the kernels ran (the fast model's trunk ops, not the fallback)
        assert fast.last_chunk_size is None or fast.last_chunk_size >= 1


def test_triton_backend_runs_the_kernels(monkeypatch):
    """The "triton" fast model launches both trunk kernels (no silent fallback to torch)."""
    from esmkernels.ops.axial import op as axial_op
    from esmkernels.ops.trimul import forward as trimul_forward
    from esmkernels.ops.trimul import op as trimul_op

    launches = Counter()
    for module, name in (
        (trimul_op, "trimul_fwd"),  # through the custom op
        (trimul_forward, "trimul_fwd"),  # inference, added into z (`add_into`)
        (axial_op, "axial_attention_fwd"),
    ):
        original = getattr(module, name)

        def counting(*args, _f=original, _n=name, **kwargs):
            launches[_n] += 1
            return _f(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)
    fast = fast_copy(tiny_model(), "triton")
    fast.set_chunk_size(None)
    with torch.no_grad():
        fast.infer(random_sequence(5, 3), num_recycles=0)
    # one block: two triangle multiplications; sequence, starting and ending attention
    assert launches == {"trimul_fwd": 2, "axial_attention_fwd": 3}


def test_backend_switch_and_pickle():
    fast = fast_copy(tiny_model(), "torch")
    assert fast.backend == "torch" and fast.esm.backend == "torch"
    fast.backend = "triton"
    ops = fast.trunk.blocks[0].tri_att_start.ops.namespace
    assert ops.backend == "triton" and fast.esm.backend == "triton"
    clone = pickle.loads(pickle.dumps(copy.deepcopy(fast)))
    assert clone.backend == "triton"
    with pytest.raises(ValueError, match="backend"):
        fast.backend = "cuda"


def test_from_pretrained_roundtrip(tmp_path):
    reference = tiny_model()
    reference.save_pretrained(tmp_path)
    fast = EsmForProteinFolding.from_pretrained(tmp_path, backend="torch")
    for (k, a), (k2, b) in zip(fast.state_dict().items(), reference.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    saved = {
        k: v for k, v in fast.config.to_dict().items() if k not in ("architectures", "torch_dtype")
    }
    assert saved == {k: v for k, v in reference.config.to_dict().items() if k in saved}
    assert fast.config.architectures == ["EsmForProteinFolding"]
