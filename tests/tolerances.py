"""One place for numerical tolerances used across the suite.

fp32: `torch.testing.assert_close(actual, expected, **FP32)` style pairs.
fp16/bf16: the rule of STYLE.md 13, implemented by `assert_within_rule`:
    max|kernel - ref_fp32| <= 2 * max|torch_at_dtype - ref_fp32| + ATOL_LOW[dtype]
"""

import torch

# Kernel vs reference in fp32 (interpreter or GPU with tf32 disabled in the kernel).
FP32 = {"atol": 2e-5, "rtol": 2e-5}
# Kernels that use tl.dot: tf32 is disallowed in our kernels, but accumulation order differs.
FP32_DOT = {"atol": 1e-4, "rtol": 1e-4}
# Whole models (many layers) vs the reference / transformers peer in fp32.
MODEL_FP32 = {"atol": 1e-4, "rtol": 1e-4}
# float64 gradchecks.
GRADCHECK = {"atol": 1e-6, "rtol": 1e-5}

ATOL_LOW = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}


def assert_within_rule(
    kernel_out: torch.Tensor,
    torch_at_dtype: torch.Tensor,
    ref_fp32: torch.Tensor,
    dtype: torch.dtype,
    name: str = "output",
) -> None:
    """Low-precision tolerance rule: the kernel may be at most twice as wrong as PyTorch itself."""
    ref = ref_fp32.float()
    k_err = (kernel_out.float() - ref).abs().max().item() if ref.numel() else 0.0
    t_err = (torch_at_dtype.float() - ref).abs().max().item() if ref.numel() else 0.0
    bound = 2 * t_err + ATOL_LOW[dtype]
    assert torch.isfinite(kernel_out).all(), f"{name}: non-finite values"
    assert k_err <= bound, (
        f"{name}: kernel err {k_err:.3e} > bound {bound:.3e} (torch err {t_err:.3e})"
    )
