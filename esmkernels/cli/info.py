"""`esmkernels info`: versions, devices, the kernel backend and the registered ops."""

from __future__ import annotations

import argparse

from esmkernels.cli._common import EXIT_OK, command_parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return command_parser(
        subparsers, "info", "versions, devices and kernel backend", "esmkernels info"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from esmkernels import __version__
    from esmkernels.ops import registry
    from esmkernels.ops._dispatch import default_backend, triton_available

    print(f"esmkernels {__version__}")
    print(f"torch {torch.__version__}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except Exception:
        print("triton: not installed")
    print(f"backend (ESMKERNELS_BACKEND): {default_backend()}")
    print(f"triton available: {triton_available()}")
    for op in registry.ops():
        print(f"op {op.name}: {len(op.kernels)} kernels, custom ops {', '.join(op.custom_ops)}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
    else:
        print("cuda: not available (models use the PyTorch path)")
    return EXIT_OK
