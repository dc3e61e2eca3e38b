"""Int8 inference for the fast ESM language models on the CPU (`from_pretrained(quantize="int8")`).

What is quantized: every `nn.Linear` of the transformer layers (query, key, value, attention
output, feed-forward up and down: ~all of the FLOPs). Embeddings, LayerNorms, the attention core
(SDPA), the LM / classification heads and the contact head stay fp32.

How: PyTorch's dynamic quantized linear (`torch.ao.nn.quantized.dynamic.Linear`), its weights
packed for the oneDNN engine where PyTorch has it (`packing_engine`; fbgemm otherwise): int8 GEMM
with int32 accumulation (AVX-512 VNNI here):

* weights: int8, symmetric, **one scale per output channel** (`per_channel_dynamic_qconfig`);
  rows of a trained ESM weight differ in norm by orders of magnitude, and one scale per tensor
  rounds the small rows away (the quality gates in tests/test_quantize.py fail that way);
* activations: uint8 with an affine scale computed from each call's input range (dynamic, no
  calibration set). The range is per call (per block of rows in the packed feed-forward), so a
  sequence's outputs depend slightly on what else is in its packed batch (within the quality
  gates; not bit batch-invariant as fp32 is).

Measured choice, 2-core AMD EPYC (AVX-512 VNNI and BF16, no AMX), 2 threads, on the ESM-2 35M /
150M layer shapes (M = 512-4,672 rows): oneDNN-packed int8 ran 700-1,340 GOP/s, fbgemm-packed
460-1,020, bf16 oneDNN 400-780 GFLOP/s, fp32 F.linear (MKL) 110-170. `torch._int_mm` on the CPU
was slower than bf16 once activations are quantized per token, so it is not used.

A quantized model is for inference only: its parameters are frozen, `.train()` and
`requires_grad_(True)` raise RuntimeError.

Example:
    >>> model = EsmForMaskedLM.from_pretrained(  # doctest: +SKIP
    ...     "facebook/esm2_t12_35M_UR50D", quantize="int8")
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from esmkernels.reference import esm_layers as ref_layers

METHODS = ("int8",)


def check_method(method: object) -> str | None:
    """`method` if it is None or one of METHODS, else ValueError / TypeError naming it."""
    if method is None:
        return None
    if not isinstance(method, str):
        raise TypeError(f"quantize={method!r}: expected a string such as 'int8', or None")
    if method not in METHODS:
        raise ValueError(f"quantize={method!r}: choose from {METHODS} (or None)")
    return method


def _ao():
    # torch.ao.quantization warns that it moves to torchao; the dynamic linear it builds is
    # what runs, and torchao is not a dependency.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao import quantization

    return quantization


def per_channel_qconfig():
    """The shipped scheme: int8 weights with one symmetric scale per output channel."""
    return _ao().per_channel_dynamic_qconfig


ENGINE = "onednn"


@contextlib.contextmanager
def packing_engine():
    """Pack the int8 weights for oneDNN's int8 GEMM where this PyTorch has it (faster than the
    default engine's fbgemm: see the module docstring). The packed weight carries its engine, so
    the global setting is restored on the way out."""
    engines = torch.backends.quantized.supported_engines
    before = torch.backends.quantized.engine
    if ENGINE in engines:
        torch.backends.quantized.engine = ENGINE
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def quantize_layers(model: nn.Module, qconfig) -> nn.Module:
    """Replace, in place, every `nn.Linear` inside the model's `EsmLayer`s by a dynamic
    quantized linear built with `qconfig`. Returns the model."""
    ao = _ao()
    layers = [m for m in model.modules() if isinstance(m, ref_layers.EsmLayer)]
    with warnings.catch_warnings(), packing_engine():
        warnings.simplefilter("ignore", UserWarning)  # quantize_per_channel deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        for layer in layers:
            ao.quantize_dynamic(layer, {nn.Linear: qconfig}, inplace=True)
    return model


def quantize_for_inference(model: nn.Module, method: str) -> nn.Module:
    """Quantize `model` (a fast ESM language model, fp32, on the CPU) in place for inference.

    Args:
        model: the model; its floating parameters must be float32 on the CPU.
        method: "int8" (see the module docstring).

    Returns the model, in eval mode, parameters frozen, marked `model.quantized == method`.
    """
    method = check_method(method)
    if method is None:
        raise ValueError("quantize_for_inference: method=None; pass 'int8'")
    for name, p in model.named_parameters():
        if p.device.type != "cpu" or p.dtype != torch.float32:
            raise ValueError(
                f"quantize={method!r} needs a float32 model on the CPU; parameter {name} is "
                f"{p.dtype} on {p.device} (load with dtype=None / torch.float32, device='cpu')"
            )
    model.eval()
    quantize_layers(model, per_channel_qconfig())
    model.requires_grad_(False)
    model.__dict__["quantized"] = method
    return model


def refuse_training(model: nn.Module, what: str) -> None:
    """RuntimeError if `model` was quantized; `what` names the refused call."""
    method = model.__dict__.get("quantized")
    if method is not None:
        raise RuntimeError(
            f"{type(model).__name__}.{what}: this model was quantized ({method}) for inference "
            "only; load it without quantize= to train or fine-tune it"
        )
