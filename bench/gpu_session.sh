#!/usr/bin/env bash
# One full GPU session in one command (for the device tool's `run`, or any CUDA machine):
#   bash bench/gpu_session.sh
# 1. assembles the package from the working tree (no build, no network: the device machine's
#    own torch / triton / transformers are used), 2. prints the GPU and versions, 3. runs the
#    gpu-marked tests and the kernel property tests with the kernels compiled for real
#    (TRITON_INTERPRET=0, hypothesis profile "gpu"), 4. runs the benchmark suite. Logs and the
#    benchmark JSON go to $OUT (the device tool's folder) or bench/results/.
# On a machine without CUDA the gpu tests skip and the benchmarks use their CPU shapes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# Compile the kernels for real where there is a GPU; interpret them elsewhere.
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export TRITON_INTERPRET=0 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-gpu}
else
  export TRITON_INTERPRET=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
fi
export PYTHONUNBUFFERED=1

site=$(mktemp -d)
mkdir -p "$site/esmkernels"
cp -r esmkernels/. "$site/esmkernels/"
cp -r reference "$site/esmkernels/reference"
cp -r ops "$site/esmkernels/ops"
cp -r models "$site/esmkernels/models"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY - <<'PY'
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
try:
    import transformers
    print("transformers", transformers.__version__)
except ImportError:
    print("transformers absent")
PY
  git rev-parse HEAD 2>/dev/null || echo "commit unknown"
} 2>&1 | tee "$OUT/env.txt"

status=0
$PY -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" || status=1
# Property tests that take the `device` fixture run compiled on the GPU here. The trunk-kernel
# property tests build CPU tensors (interpreter only); their compiled coverage is the gpu-marked
# large-shape tests above.
$PY -m pytest -q -p no:cacheprovider -m "not slow and not gpu" \
  tests/test_ops_layer_norm.py tests/test_ops_rotary_attention.py \
  tests/test_models_esm.py 2>&1 | tee "$OUT/kernel_tests.log" || status=1
$PY -m bench.run "$@" 2>&1 | tee "$OUT/bench.log" || status=1
cp bench/results/*.json "$OUT/" 2>/dev/null || true
exit $status
