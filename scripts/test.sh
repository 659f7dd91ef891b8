#!/usr/bin/env bash
# Set-up, then every test: core tests always, ComfyUI integration tests when
# COMFYUI_PATH points at a ComfyUI checkout (they skip, saying so, otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One intra-op thread per process: the tests' tensors are small, and the DDP tests run
# two processes, so more threads only oversubscribe the cores (10x slower under load).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${PYTHON:-python3}" -m pytest tests "$@"
