"""The kernels as PyTorch custom ops (`torch.library`): the one helper every op module uses.

Each `ops/<op>_kernels.py` registers its forward and backward launchers as operators in the
`esmkernels` namespace (`torch.ops.esmkernels.<op>_fwd` / `<op>_bwd`), each with

- a fake (meta) implementation: output shapes, dtypes and strides only, so FakeTensor / meta
  runs and `torch.compile` see the op's true memory footprint (its outputs and the statistics it
  saves for the backward, e.g. LayerNorm's fp32 mean / rstd or attention's log-sum-exp);
- a registered autograd formula (`register_autograd`) whose backward calls the backward op.

The public function of each op calls the forward op, so `torch.compile(model)` traces through
the kernels as opaque nodes, without graph breaks, forward and backward. The layering of
STYLE.md rule 4 becomes: jit kernels -> launchers -> custom ops (fake + autograd, in place of a
`torch.autograd.Function`) -> public function with `backend=`.

Why `custom_op` and not `torch.library.triton_op`: `triton_op` lets Inductor see the Triton
kernel inside (useful for AOTInductor export), but it builds its fake implementation by running
the launcher on FakeTensors through `wrap_triton`. Under `TRITON_INTERPRET=1` (the CPU test
mode) the interpreter then dereferences the fake tensors' data pointers, and both Dynamo's fake
run and Inductor's lowering fail ("Cannot access data pointer of Tensor"), measured with torch
2.13 / triton 3.9. An opaque `custom_op` with a hand-written fake works in eager, `aot_eager`
and Inductor alike, on CPU under the interpreter and on CUDA.

The torch path of each op (backend="torch") is plain PyTorch and needs no registration: it is
traced by `torch.compile` like any other code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

NAMESPACE = "esmkernels"


def define(
    name: str,
    *,
    fake: Callable,
    backward: Callable | None = None,
    setup_context: Callable | None = None,
) -> Callable:
    """Decorator: register `fn` as the operator `esmkernels::<name>` (no input is mutated), with
    its fake implementation and, when `backward` is given, its autograd formula.

    Returns the `torch.library.CustomOpDef`; calling it is calling `torch.ops.esmkernels.<name>`.
    """

    def register(fn: Callable):
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", fn, mutates_args=())
        op.register_fake(fake)
        if backward is not None:
            op.register_autograd(backward, setup_context=setup_context)
        return op

    return register


@contextlib.contextmanager
def autograd_inside_op() -> Iterator[None]:
    """Run autograd inside a custom op's implementation (the triangle multiplication's backward
    recomputes its forward through the reference and back-propagates it, row block by row block).

    The dispatcher calls an op's implementation with the autograd keys excluded, so a graph built
    there records nothing, `torch.enable_grad()` notwithstanding. This lifts that exclusion (and
    only that) for the block, as torch's own higher-order ops do (`invoke_leaf_function`).
    """
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C._dispatch_tls_local_exclude_set()
    exclude = exclude.remove(torch._C.DispatchKey.AutogradFunctionality)
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield
