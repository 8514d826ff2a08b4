#!/usr/bin/env bash
# The GPU check, one prepared script: the CUDA tests (pytest -m cuda), then benchmarks/gpu.py
# (augmentation samples/s vs elasticdeform, paper-net training steps/s with and without AMP,
# paper-net prediction MP/s over a 16384^2 zarr slide including I/O). Under 8 minutes on one
# recent GPU: each part has its own time limit.
#
#   benchmarks/gpu.sh          # on a machine with a CUDA GPU; exits 0 with a message without one
#   benchmarks/gpu.sh --dry    # anywhere: checks this script and runs gpu.py's code on the CPU
#
# PYTHON selects the interpreter (default: .venv/bin/python if present, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

if [[ "${1:-}" == "--dry" ]]; then
    bash -n "$0"
    timeout 300 "$PYTHON" benchmarks/gpu.py --dry
    timeout 120 "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py  # collects, then skips without CUDA
    echo "benchmarks/gpu.sh --dry: ok"
    exit 0
fi

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "benchmarks/gpu.sh: torch sees no CUDA GPU here; nothing to check (skipped)."
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 120 "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py
timeout 330 "$PYTHON" benchmarks/gpu.py "$@"
