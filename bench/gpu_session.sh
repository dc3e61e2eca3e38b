#!/usr/bin/env bash
# One GPU session in one command, sized for a short GPU window (the device tool's `run`, or any
# CUDA machine):
#   bash bench/gpu_session.sh [--budget SECONDS]      (default 480)
# Runs from this working tree on the machine's own torch / triton / transformers: no install,
# no network. Phases in priority order, each with its own cap (bench/gpu_session.py): the
# environment and the supported version set it matches, the sm_90 compile checks under this
# machine's Triton, compiled correctness (gpu-marked tests, then the kernel property tests), kernel
# benchmarks against their targets, ESM-2 and ESMFold against transformers, the longest fold.
# Results go to $OUT (default bench/results/gpu-session-<time>/) as they come: summary.md,
# results.json, session.log, tuned_configs.json. Bring them home with
#   python -m bench.collect_gpu_run $OUT
# Without CUDA the kernels run interpreted at tiny sizes and the GPU-only phases say so.
# A copied tree without .git records the commit given as ESMKERNELS_COMMIT=<sha>.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-session-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# Compile the kernels where there is a GPU; interpret them elsewhere.
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export TRITON_INTERPRET=0
else
  export TRITON_INTERPRET=1
fi

# The package from this tree without installing it: esmkernels/ with its layers linked in as
# esmkernels.ops / .models / .reference (links, so tests see the files of this tree).
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
mkdir -p "$site/esmkernels"
for entry in esmkernels/*; do ln -s "$PWD/$entry" "$site/esmkernels/$(basename "$entry")"; done
for layer in ops models reference; do ln -s "$PWD/$layer" "$site/esmkernels/$layer"; done
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Autotune winners of earlier phases are kept on disk (Triton's cache_results) for later ones.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$site/triton-cache}

# Preflight: this machine's versions and the supported set they match (docs/COMPATIBILITY.md).
# The first phase after `env` runs the sm_90 compile checks under them (compile_checks).
$PY -c "from esmkernels.ops._compat import environment_line; print(environment_line())" || true

$PY -m bench.gpu_session --out "$OUT" "$@"
