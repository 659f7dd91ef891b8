#!/usr/bin/env bash
# Set-up, then a video from the bundled model: bash scripts/demo.sh [demo options]
# (defaults: "a red circle and a blue square", 10 s, seed 0, ./demo.mp4; --help lists the options).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m vldm_core demo "$@"
