#!/usr/bin/env bash
# The prepared GPU check of issue 2, for one `device` call (about 8 minutes on an H100):
#   1. which GPU; what dtype cuDNN's LSTM runs in under bf16 autocast (expected: fp16)
#   2. training tokens/s and seconds/epoch, small/medium/large x fused/stacked x fp32/bf16-mixed (plain loop)
#   3. ptb/medium in full (39 epochs), fused backbone, fp32: test perplexity vs the paper's 82.7
# fp32 rather than bf16-mixed for (3): cuDNN runs RNNs in fp16 under bf16 autocast and Lightning's
# bf16 path has no GradScaler, so small LSTM gradients can underflow; medium is small enough that
# fp32 (TF32 matmuls) costs little.
# Before the call, here: mkdir -p .gpudata/ptb && cp ../shared/data/ptb/*.txt .gpudata/ptb/
# Call: run(command="bash scripts/gpu_check.sh", carry=[".gpudata"], timeout_s=590)
# The GPU image has torch and lightning; wandb is not needed (--logger csv).
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
DATA=${DATA:-.gpudata}
OUT=${OUT:-results/gpu}  # on the device machine $OUT is the folder that comes back
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' | tee -a "$OUT/gpu.txt"
import torch
lstm = torch.nn.LSTM(64, 64, 2).cuda()
with torch.autocast("cuda", dtype=torch.bfloat16):
    y, _ = lstm(torch.randn(5, 3, 64, device="cuda"))
print(f"cuDNN LSTM output dtype under bf16 autocast: {y.dtype}")
PY
python3 scripts/bench_throughput.py --data-root "$DATA" --accelerator cuda --loops plain \
    --backbones fused stacked --precisions 32-true bf16-mixed --presets small medium large --steps 300 200 100 --reps 1 \
    --out "$OUT/throughput_gpu.csv"
python3 -m benchmark.cli run --task ptb --preset medium --accelerator gpu --devices 1 --precision 32-true \
    --data-root "$DATA" --results-dir "$OUT" --runs-dir /tmp/runs --logger csv 2>&1 | grep -v "it/s"
