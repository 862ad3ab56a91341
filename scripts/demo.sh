#!/usr/bin/env bash
# README command 1: set up, then run the main job on the embedded demo photos (Fashion-MNIST subset, real labels)
# with the packaged ImageNet EfficientNet-Lite0/1/2 weights, fully offline, planned to a 4-minute budget: the
# planner measures this machine's costs, prints its plan, probes the backbones it can afford, keeps their averaged
# probes if that cross-validates better, fine-tunes if time is left, and writes the run record, advice and
# report.html (plan vs actual included). `python bench/budget.py` is why: every budget it measured beat the
# unplanned default on the mean, and 4x the budget never scored lower (docs/benchmarks.md).
# Extra arguments are passed to `transferlab run` (e.g. --time-limit 10m, --preset best).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
name="demo-$(date -u +%Y%m%d-%H%M%S)"
transferlab run examples/fashion --name "$name" --time-limit 4m "$@"
