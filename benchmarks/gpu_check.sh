#!/usr/bin/env bash
# GPU check (issue #14): both engines on full-size random models on one CUDA GPU, against the
# textbook loops; prints it/s, s/step, peak VRAM and ratios. Nothing is downloaded; < 8 minutes.
#
#   benchmarks/gpu_check.sh                 # on a machine with CUDA
#   benchmarks/gpu_check.sh --dry-run       # the same logic on the CPU with tiny models
#   PYTHON=/path/to/venv/bin/python benchmarks/gpu_check.sh --skip-image
#
# Exit: 0 passed, 1 a wrong result (see the FAIL lines), 77 no CUDA device (nothing measured).
# Options: python benchmarks/gpu_check.py --help
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, not an installed copy
exec "${PYTHON:-python3}" "$here/gpu_check.py" "$@"
