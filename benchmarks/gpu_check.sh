#!/usr/bin/env bash
# Everything a GPU machine should confirm, in one run: the CUDA test tier and the GPU benchmarks.
# Logs go to $OUT (default gpu_results/). On a machine without the registry, install the carried
# wheels first (docs/gpu.md).
#
#   bash benchmarks/gpu_check.sh            # ~15 minutes on one H100
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
git rev-parse --short HEAD > "$OUT/commit.txt" 2>/dev/null || true
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# 1. the suite with the GPU as the device (prints how many tests ran on cuda)
timeout 360 make test-gpu PYTHON="$PYTHON" > "$OUT/test_gpu.log" 2>&1
echo "make test-gpu: exit $?" | tee -a "$OUT/summary.txt"
tail -3 "$OUT/test_gpu.log" | tee -a "$OUT/summary.txt"

# 2. the training step: plain PyTorch vs the engine, ViT-B 16x224 batch 32 bf16 (gate: <= 1.10x)
timeout 150 "$PYTHON" benchmarks/engine_step.py --size base --frames 16 --img-size 224 --batch 32 \
  --stages 0,1,2 --precisions bf16 --warmup 5 --steps 20 > "$OUT/engine_step.log" 2>&1
tail -6 "$OUT/engine_step.log" | tee -a "$OUT/summary.txt"

# 3. the model step against HF's, compiled (fullgraph) vs eager, and the patch embedding alone:
#    Conv3d over all cubes vs the visible cubes only
timeout 180 "$PYTHON" benchmarks/model_step.py --size base --device cuda --dtype bf16 --batch 32 \
  --compile --warmup 3 --repeats 10 > "$OUT/model_step.log" 2>&1
tail -10 "$OUT/model_step.log" | tee -a "$OUT/summary.txt"

# 4. feeding the GPU: end-to-end vs model-only, 15 workers, K = 1, 2, 4 (gate at K=4: >= 0.90)
for k in 4 2 1; do
  timeout 150 "$PYTHON" benchmarks/train_throughput.py --repeats $k --workers 15 --epochs 2 \
    > "$OUT/train_throughput_k$k.log" 2>&1
  tail -8 "$OUT/train_throughput_k$k.log" | tee -a "$OUT/summary.txt"
done
