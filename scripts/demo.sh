#!/usr/bin/env bash
# README command 1: set up, then run the main job on the embedded demo photos (Fashion-MNIST subset, real labels)
# with the packaged ImageNet EfficientNet-Lite0 weights. Fully offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
transferlab run examples/fashion --name demo "$@"
