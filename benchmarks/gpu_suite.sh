#!/bin/bash
# The GPU checks in one prepared run (about 9 minutes on one H100/H200): the CUDA tests, then quality_mri
# (--minutes per model, batch 32) and, once its models are trained, memorization on all 400 ORL photos with a
# long step budget, while quality_mri evaluates; beside them from the start, fullsize's diffusion rows (one_step, fast
# with 50 steps and the fastMRI recipes' network on official-size brain and knee slices, all coils and coils=4: its
# CUDA peak memory is exact, its times are taken beside quality_mri's training). Needs the [demo] extras importable.
#     OUT=/some/dir MINUTES=5 bash benchmarks/gpu_suite.sh
set -u
OUT=${OUT:-benchmarks/results/gpu_suite}
MINUTES=${MINUTES:-5}
MEM_STEPS=${MEM_STEPS:-20000}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
(timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_operators.py -p no:cacheprovider \
    > "$OUT/gpu_tests.log" 2>&1; echo "rc=$?" >> "$OUT/gpu_tests.log") &
(timeout $((60 * MINUTES + 200)) python3 benchmarks/quality_mri.py --device cuda --minutes "$MINUTES" --workers 6 \
    --work /tmp/gpu_suite_quality --set training.batch_size=32 --set training.checkpoint_every=2000 \
    --out "$OUT/quality_mri.json" > "$OUT/quality.log" 2>&1; echo "rc=$?" >> "$OUT/quality.log") &
(timeout 420 python3 benchmarks/fullsize.py --device cuda --methods one_step fast --threads 4 \
    --out "$OUT/fullsize_cuda.json" > "$OUT/fullsize.log" 2>&1; echo "rc=$?" >> "$OUT/fullsize.log") &
(sleep $((60 * MINUTES + 40)); timeout 220 python3 benchmarks/memorization.py --device cuda --limit 0 \
    --steps "$MEM_STEPS" --stages 1000,2000,4000 --minutes 2 --workers 3 --work /tmp/gpu_suite_mem --out "$OUT/memorization.json" \
    > "$OUT/memorization.log" 2>&1; echo "rc=$?" >> "$OUT/memorization.log") &
wait
echo "[$(( $(date +%s) - T0 ))s] done"
tail -3 "$OUT/gpu_tests.log"; tail -30 "$OUT/quality.log"; tail -25 "$OUT/memorization.log"; tail -16 "$OUT/fullsize.log"
