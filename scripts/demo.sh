#!/usr/bin/env bash
# README command 1: set up, then run the main job on the embedded demo photos (Fashion-MNIST subset, real labels)
# with the packaged ImageNet EfficientNet-Lite0/Lite1 weights, fully offline, at 112 px (the photos are 28×28):
# rank both backbones at every cut point → probe on the chosen one → 30-trial head search (+ data-fraction curve)
# → fine-tuning of the top 3 blocks → run record, advice and report.html. A few minutes on 2 CPU cores.
# Extra arguments are passed to `transferlab run` (e.g. --image-size 224, --trials 50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
name="demo-$(date -u +%Y%m%d-%H%M%S)"
transferlab run examples/fashion --name "$name" --image-size 112 \
    --backbones tf_efficientnet_lite0,tf_efficientnet_lite1 --trials 30 --fractions 0.25,0.5,1 \
    --finetune --unfreeze top:3 --epochs 8 "$@"
