#!/usr/bin/env bash
# The checks CI cannot run: the CUDA tests and the GPU benchmarks, on a machine with an NVIDIA GPU.
#
# Needs: an NVIDIA driver + a CUDA build of torch (scripts/setup.sh installs the pinned wheels; on a GPU machine
# `pip install torch==2.14.1 torchvision==0.29.1` from the CUDA index), the packaged weights (setup does it).
# Prints the device, the CUDA test results and both benchmarks' figures (naive fp32 vs ours on the same GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || bash scripts/setup.sh test
. .venv/bin/activate
python - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu-check: no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
             "run this on a machine with an NVIDIA GPU and a CUDA build of torch")
for index in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(index)
    print(f"cuda:{index}: {p.name}, {p.total_memory / 2**30:.1f} GB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
EOF
echo "== CUDA tests (and the device tests that run anywhere)"
python -m pytest -q -p no:cacheprovider -rs tests/test_devices.py
echo "== extraction: naive fp32 loop vs the limit vs transferlab, on the GPU"
workers=$(( $(nproc) > 9 ? 8 : $(nproc) - 1 ))
python bench/extract.py --device cuda --images 800 --batch-size 128 --workers "$workers" --threads "$(nproc)"
echo "== fine-tuning epoch: AMP vs fp32, on the GPU"
python bench/finetune.py --device cuda --image-size 224 --fraction 1.0 --epochs 2 --rounds 1
