#!/usr/bin/env bash
# One lent-GPU session, run once from the repo root (device time is scarce, so everything is here):
#   1. stage 2 of the default model: three batch/lr candidates trained concurrently on the GPU
#      (a tiny UNet is launch-bound, so they share it well); steps sized from a short probe so the
#      whole run fits TRAIN_S seconds; the pick is made later on validation prompts, not here;
#   2. the CUDA-only tests (fp16/bf16 vs fp32, fp32 VAE under fp16);
#   3. bench/gpu.py: SD-1.5-size ours vs diffusers (fp16 speed, memory, pixel differences).
# Needs: .whl (transformers 5.24.0, diffusers 0.42.1, importlib_metadata) and the stage-1
# autoencoder at $AUTOENCODER. Writes at most 8 files under $OUT.
# Env: DEVICE (cuda), TRAIN_S (270), NUM_IMAGES (50000), PROBE_STEPS (150), BENCH_ARGS (""),
# CANDIDATES ("name:batch:lr ..."), TRAIN_ONLY (set: stop after training and validation).
set -u
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
TRAIN_S=${TRAIN_S:-270}
NUM_IMAGES=${NUM_IMAGES:-50000}
PROBE_STEPS=${PROBE_STEPS:-150}
AUTOENCODER=${AUTOENCODER:-runs/autoencoder_zero_decoder/autoencoder.pt}
CANDIDATES=${CANDIDATES:-"b128_lr6e-4:128:6e-4 b256_lr8e-4:256:8e-4 b512_lr1e-3:512:1e-3"}
WORK=${WORK:-/tmp/gpu_work}
mkdir -p "$OUT" "$WORK/logs"
export PYTHONUNBUFFERED=1
began=$(date +%s)
say() { echo "[session +$(($(date +%s) - began))s] $*" | tee -a "$OUT/summary.txt"; }

if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
say "host $(hostname); $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/summary.txt"

train() {  # name batch lr steps run_root time_limit(0: none)
  timeout "$6" python3 -m cli.main train ldm --device "$DEVICE" --steps "$4" --batch-size "$2" --lr "$3" \
    --num-images "$NUM_IMAGES" --sample-every 0 --no-resume --autoencoder "$AUTOENCODER" \
    --run-dir "$5/$1" --output "$5/$1/model"
}

say "probe: $PROBE_STEPS steps of each candidate, concurrently"
for c in $CANDIDATES; do
  IFS=: read -r name batch lr <<<"$c"
  train "$name" "$batch" "$lr" "$PROBE_STEPS" "$WORK/probe" 120 >"$WORK/logs/probe_$name.log" 2>&1 &
done
wait
plan=""
for c in $CANDIDATES; do
  IFS=: read -r name batch lr <<<"$c"
  rate=$(grep -o '[0-9.]* it/s' "$WORK/logs/probe_$name.log" | tail -1 | cut -d' ' -f1)
  steps=$(python3 -c "print(max(${MIN_STEPS:-250}, min(40000, int(${rate:-0} * $TRAIN_S * 0.9 / 250) * 250)))")
  say "$name: probe ${rate:-?} it/s -> $steps steps"
  plan="$plan $name:$batch:$lr:$steps"
done

say "training the candidates for ~${TRAIN_S}s"
for p in $plan; do
  IFS=: read -r name batch lr steps <<<"$p"
  train "$name" "$batch" "$lr" "$steps" "$WORK/runs" $((TRAIN_S + 90)) \
    >"$WORK/logs/train_$name.log" 2>&1 &
done
wait
for p in $plan; do
  IFS=: read -r name _ _ steps <<<"$p"
  say "$name: $(grep -E 'trained in|Error|error' "$WORK/logs/train_$name.log" | tail -1)"
done
for p in $plan; do  # one tar per candidate: a returned file may be at most 16 MB
  IFS=: read -r name _ _ _ <<<"$p"
  tar cf "$OUT/model_$name.tar" -C "$WORK/runs" "$name/model" "$name/losses.json" "$name/config.json"
done

say "validation adherence (150 prompts, seed 30000, guidance 3, fp32 on $DEVICE)"
for p in $plan; do
  IFS=: read -r name _ _ _ <<<"$p"
  timeout 60 python3 - "$WORK/runs/$name/model" "$DEVICE" <<'EOF' 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
import sys
from pathlib import Path

import numpy as np
import torch

from model.engine import BatchEngine
from model.pipeline import load_pipeline
from model.txt2img import txt2img
from training.judge import adherence
from training.shapes import eval_samples

pipe = load_pipeline(Path(sys.argv[1]), sys.argv[2], torch.float32)
samples = eval_samples(150, seed=30_000)
images = []
for i in range(0, len(samples), 50):
    b = samples[i : i + 50]
    out = txt2img(
        BatchEngine(pipe),
        prompts=[s.caption for s in b], seeds=[5000 + i + j for j in range(len(b))],
        width=64, height=64, steps=25, guidance_scale=3.0, sampler="ddim",
    )
    images += [np.asarray(o.convert("RGB")) for o in out]
m = adherence(images, samples)
print(sys.argv[1].split("/")[-2], {k: round(v, 3) for k, v in m.items() if not k.startswith("num")})
EOF
done

if [ -n "${TRAIN_ONLY:-}" ]; then
  tar czf "$OUT/logs.tar.gz" -C "$WORK" logs
  say "done (TRAIN_ONLY)"
  exit 0
fi
if [ "$DEVICE" = cuda ]; then
  say "CUDA tests"
  timeout 120 python3 -m pytest -q -m gpu tests/test_model_gpu.py tests/test_training_smoke.py -p no:cacheprovider \
    >"$OUT/gpu_tests.log" 2>&1
  say "CUDA tests exit $? : $(tail -1 "$OUT/gpu_tests.log")"
fi
say "bench/gpu.py"
# shellcheck disable=SC2086
timeout "${BENCH_S:-150}" python3 -m bench.gpu --out "$OUT/gpu_bench.md" ${BENCH_ARGS:-} \
  >"$WORK/logs/bench.log" 2>&1
say "bench exit $?"
tar czf "$OUT/logs.tar.gz" -C "$WORK" logs
say "done"
