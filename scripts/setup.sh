#!/usr/bin/env bash
# Installs what the pack, its tests and its CLI need into the current Python.
# torch: an installed one is kept; otherwise the CPU build 2.13.0 (an unpinned
# torch would pull several GB of CUDA packages). With COMFYUI_PATH set, also
# ComfyUI's requirements, with torch pinned to the installed version, and
# playwright for the frontend tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

"$PY" -c "import torch" 2>/dev/null || pip_install torch==2.13.0
pip_install -r requirements.txt pytest hypothesis

if [ -n "${COMFYUI_PATH:-}" ]; then
  constraints=$(mktemp)
  "$PY" - > "$constraints" <<'PY'
import torch
version = torch.__version__.split("+")[0]
major, minor = (int(v) for v in version.split(".")[:2])
print(f"torch=={version}")
print(f"torchvision==0.{minor + 15}.*")  # the torchvision release built for this torch
PY
  grep -v -E '^(torch|torchvision|torchaudio)\s*$' "$COMFYUI_PATH/requirements.txt" > "$constraints.req"
  pip_install -c "$constraints" -r "$constraints.req" torchvision
  rm -f "$constraints" "$constraints.req"
  # The frontend tests drive the system's Chromium with playwright (which downloads no browser).
  pip_install "playwright>=1.40"
fi
