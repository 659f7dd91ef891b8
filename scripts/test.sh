#!/usr/bin/env bash
# Set-up, then every test: core tests always, ComfyUI integration tests when
# COMFYUI_PATH points at a ComfyUI checkout (they skip, saying so, otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest tests "$@"
