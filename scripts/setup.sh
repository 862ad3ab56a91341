#!/usr/bin/env bash
# Create .venv (if missing) and install transferlab with the given extras, CPU torch first.
# torch/torchvision are pinned to the releases shipped as local wheels; plain `pip install torch` pulls several GB.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -e ".${extras:+[$extras]}" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import transferlab, torch, timm" || { echo "setup failed: transferlab did not import" >&2; exit 1; }
