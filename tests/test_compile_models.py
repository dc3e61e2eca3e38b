"""`torch.compile` on the fast language models (esmkernels.EsmForMaskedLM & co.).

- Every layer compiles with `fullgraph=True` (a graph break inside a layer raises), on the
  torch path and on the Triton kernels (interpreted), in inference and in a training step, and
  the compiled model equals eager (logits, loss, gradients).
- `torch.compile(model)`: the only graph breaks are outside the layers, where the batch is
  inspected on the host: input validation (`check_inputs`) and unpadding (`PackedBatch.from_mask`:
  `nonzero` and the longest length are data-dependent). Compiled == eager.

Backend "aot_eager": Dynamo and AOTAutograd trace exactly what Inductor would receive (fake
tensors through the custom ops), without Inductor's C++ code generation, which takes minutes on a
2-core CPU. Inductor itself was run by hand (see the README's compile notes).
"""

from __future__ import annotations

import copy

import pytest
import torch

from esmkernels import EsmForMaskedLM, EsmForSequenceClassification
from tests import _launches as L
from tests._configs import tiny_lm_config
from tests.tolerances import MODEL_FP32

PAD, MASK = 1, 32
TOKENS = torch.tensor([[0, 5, 32, 7, 9, 10, 2], [0, 8, 9, 2, 1, 1, 1], [0, 4, 32, 6, 2, 1, 1]])
MASKS = TOKENS.ne(PAD).long()
LABELS = torch.where(TOKENS == MASK, 7, -100)
# Host-side work before the first layer: the only places a graph may break.
ALLOWED_BREAKS = {"check_inputs", "from_mask"}


def model(backend: str, cls=EsmForMaskedLM, **kw):
    torch.manual_seed(0)
    return cls(tiny_lm_config("esm2", **kw), backend=backend)


def step(m, labels=LABELS):
    """Forward with labels and backward: (logits at real positions, loss, grads)."""
    m.zero_grad()
    out = m(TOKENS, attention_mask=MASKS, labels=labels)
    out.loss.backward()
    grads = {
        n.removeprefix("_orig_mod."): p.grad.clone()  # torch.compile wraps the module
        for n, p in m.named_parameters()
        if p.grad is not None
    }
    logits = out.logits[MASKS.bool()] if out.logits.dim() == 3 else out.logits
    return logits.detach(), out.loss.detach(), grads


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], **MODEL_FP32)
    torch.testing.assert_close(a[1], b[1], **MODEL_FP32)
    assert a[2].keys() == b[2].keys()
    for key in a[2]:
        torch.testing.assert_close(a[2][key], b[2][key], **MODEL_FP32, msg=key)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layers_compile_without_graph_breaks_training_and_inference(backend):
    eager = model(backend).train()
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    for layer in compiled.esm.encoder.layer:
        layer.compile(fullgraph=True, backend="aot_eager")  # in place: parameter names unchanged
    want = step(eager)
    with L.launches() as seen:
        got = step(compiled)
    if backend == "triton":
        seen.expect(*L.ROTARY_FWD, *L.ROTARY_BWD, *L.LAYER_NORM)
    else:
        assert not seen.kernels and seen.fallbacks["rotary_attention_varlen"], seen
    assert_same(got, want)
    with torch.no_grad():
        eager.eval(), compiled.eval()
        a = compiled(TOKENS, attention_mask=MASKS).logits
        torch.testing.assert_close(a, eager(TOKENS, attention_mask=MASKS).logits, **MODEL_FP32)


def test_whole_model_breaks_only_before_the_layers():
    m = model("triton").eval()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m)(TOKENS, attention_mask=MASKS)
    innermost = {r.user_stack[-1].name for r in explained.break_reasons if r.user_stack}
    assert innermost <= ALLOWED_BREAKS, [r.reason[:200] for r in explained.break_reasons]


@pytest.mark.parametrize("cls", [EsmForSequenceClassification])
def test_compiled_model_equals_eager(cls):
    eager = model("torch", cls, num_labels=3).train()
    compiled_model = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, backend="aot_eager")
    labels = LABELS if cls is EsmForMaskedLM else torch.tensor([0, 2, 1])
    assert_same(step(compiled, labels), step(eager, labels))
    # The compiled module shares parameters with the model it wraps: training updates both.
    assert compiled_model.esm.encoder.layer[0].attention.self.query.weight.grad is not None
