#!/bin/bash
# A-DPS on a CUDA machine in one prepared run (about 8 minutes on one H200): the CUDA tests; adps_variants.py at
# 500 steps with a model trained on the CPU (MODEL, e.g. the demo's) on the calibration, demo and EPI sets; and,
# beside it, a model trained on the GPU for MINUTES with the demo recipe (batch 32) on the demo's R=4 training set,
# then adps_variants.py with that model on the demo and EPI sets. The raw sets are passed prebuilt (the GPU machine
# has no nilearn/nibabel): DATA holds calib/, epi/, demo13/data/{raw/val,prepared_r4/train}.
#     OUT=/some/dir DATA=.gpu MODEL=.gpu/demo13/runs/demo_mni_r4/model.pt MINUTES=3 bash benchmarks/gpu_adps.sh
set -u
OUT=${OUT:-benchmarks/results/gpu_adps}
DATA=${DATA:-.gpu}
MODEL=${MODEL:-$DATA/demo13/runs/demo_mni_r4/model.pt}
MINUTES=${MINUTES:-3}
ACC=${ACC:-4 8}
VARIANTS=${VARIANTS:-scan:1 acquired:1 training:1 acquired:1:2}
GPU_VARIANTS=${GPU_VARIANTS:-scan:1 acquired:1 training:1}
STEPS=${STEPS:-500}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-470}  # seconds after the start by which every job has ended
TESTS=${TESTS:-1}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
SETS="--set calib=$DATA/calib --set demo=$DATA/demo13/data/raw/val --set epi=$DATA/epi"
[ "$TESTS" = 1 ] && (timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_operators.py -p no:cacheprovider \
    > "$OUT/gpu_tests.log" 2>&1; echo "rc=$?" >> "$OUT/gpu_tests.log") &
(timeout $DEADLINE python3 benchmarks/adps_variants.py --model "$MODEL" --device $DEVICE --steps $STEPS --workers 4 $SETS --classical \
    --accelerations $ACC --variants $VARIANTS --work /tmp/av_cpu_model --out "$OUT/adps_variants_cpu_model.json" \
    > "$OUT/adps_cpu_model.log" 2>&1; echo "rc=$?" >> "$OUT/adps_cpu_model.log") &
(timeout $((60 * MINUTES + 90)) python3 -m ambient_mri train recipes/demo_mni_r4.yaml --no-progress \
    --set data.path="$DATA/demo13/data/prepared_r4/train" --set output=/tmp/gpu_runs --set device=$DEVICE \
    --set training.max_minutes="$MINUTES" --set training.steps=1000000 --set training.batch_size=32 \
    --set training.checkpoint_every=2000 > "$OUT/train.log" 2>&1; echo "rc=$?" >> "$OUT/train.log"
 cp /tmp/gpu_runs/demo_mni_r4/log.jsonl "$OUT/gpu_model_log.jsonl"; cp /tmp/gpu_runs/demo_mni_r4/model.pt "$OUT/gpu_model.pt"
 timeout $((DEADLINE - $(date +%s) + T0)) python3 benchmarks/adps_variants.py --model /tmp/gpu_runs/demo_mni_r4/model.pt \
    --device $DEVICE --steps $STEPS --workers 3 $SETS --classical --with-fast --sets demo epi --accelerations $ACC --variants $GPU_VARIANTS --work /tmp/av_gpu_model \
    --out "$OUT/adps_variants_gpu_model.json" > "$OUT/adps_gpu_model.log" 2>&1; echo "rc=$?" >> "$OUT/adps_gpu_model.log") &
wait
echo "[$(( $(date +%s) - T0 ))s] done"
tail -3 "$OUT/gpu_tests.log" 2>/dev/null; tail -12 "$OUT/adps_cpu_model.log"; tail -4 "$OUT/train.log"; tail -10 "$OUT/adps_gpu_model.log"
