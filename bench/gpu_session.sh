#!/usr/bin/env bash
# One lent-GPU session for compiled sampling (issue 15), from the repo root; every part has its
# own time limit, so a failure or an overrun costs that part only. Two device calls, one right
# after the other while the machine is warm: PARTS=1 (~8 min) then PARTS=23 (~4 min):
#   1. bench/gpu_compiled.py: SD 1.5-size random weights, 512 px, 25 DDIM steps, CFG, fp16: ours
#      eager / graphs over inductor vs diffusers eager and diffusers + torch.compile, 1 and 16
#      images, then the batch-16 candidates (--gaps: decoder at one bucket, bf16 VAE, cuDNN SDPA,
#      inductor on channels_last); SWEEPS=1 adds the rows measured on 2026-11-30 (graphs over
#      eager kernels, CFG fused vs split, decode memory per batch);
#   2. bench/load.py --device cuda: api + worker (LDM_COMPILE=auto) + 32 closed-loop clients vs
#      the direct pipeline at the worker's batch;
#   3. the CUDA tests (graphs vs eager, fp16/bf16 vs fp32, fp32 VAE).
# Needs (carried, see docs/benchmarks.md): .whl (diffusers, transformers and the API's packages
# for the image's Python) and .gpu_carry/redis (a redis-server that runs there). Writes $OUT.
# Env: PARTS (1: all three would outrun a device call's 10 minutes), DEVICE (cuda), COMPILED_S
# (470), LOAD_S (150), TESTS_S (60); SMOKE=1: a CPU dry run (PARTS=12 for both parts).
set -u
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
[ -n "${SMOKE:-}" ] && DEVICE=cpu
WORK=${WORK:-/tmp/gpu_work}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
began=$(date +%s)
say() { echo "[session +$(($(date +%s) - began))s] $*" | tee -a "$OUT/summary.txt"; }

if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
[ -d .gpu_carry/redis ] && export PATH=$PWD/.gpu_carry/redis:$PATH
say "host $(hostname); $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null); $(nproc) cores"
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)" 2>&1 | tee -a "$OUT/summary.txt"
redis-server --version 2>&1 | tee -a "$OUT/summary.txt"

PARTS=${PARTS:-1}
if [ -n "${SMOKE:-}" ]; then
  compiled=(--smoke --big 2 --gaps --gap-attention math)
  load=(--tiny --device cpu --compile off --clients 4 --max-batch 4 --direct-batch 4 --seconds 5
        --direct-repeats 1 --width 64 --height 64)
else
  compiled=(--device "$DEVICE" --gaps)
  [ -n "${SWEEPS:-}" ] && compiled+=(--sweeps)
  # eager on both sides: the service-vs-direct ratio is what part 2 measures, and a compiled
  # worker's warm-up (~5 min on an H100 with a cold cache) would not fit the session's budget
  load=(--sd15 --device "$DEVICE" --dtype float16 --compile off --clients 32 --max-batch 16
        --direct-batch 16 --seconds 30 --direct-repeats 2 --width 512 --height 512)
fi

if [[ $PARTS == *1* ]]; then
  say "1. bench/gpu_compiled.py"
  timeout "${COMPILED_S:-470}" python3 -m bench.gpu_compiled --out "$OUT/gpu_compiled.md" \
    --budget-s $((${COMPILED_S:-470} - 70)) "${compiled[@]}" >"$OUT/gpu_compiled.log" 2>&1
  say "gpu_compiled exit $?"
fi

if [[ $PARTS == *2* ]]; then
  say "2. bench/load.py (service vs direct)"
  timeout "${LOAD_S:-150}" python3 -m bench.load "${load[@]}" --configs direct,batched \
    --no-flops >"$OUT/load.log" 2>&1
  say "load exit $? : $(grep -A12 '## results' "$OUT/load.log" | tr '\n' ' ' | cut -c1-900)"
fi

if [[ $PARTS == *3* ]] && [ "$DEVICE" = cuda ]; then
  say "3. CUDA tests"
  timeout "${TESTS_S:-60}" python3 -m pytest -q -m gpu tests/test_model_compiled.py \
    tests/test_model_gpu.py -p no:cacheprovider >"$OUT/gpu_tests.log" 2>&1
  say "CUDA tests exit $? : $(tail -1 "$OUT/gpu_tests.log")"
fi
cat "$OUT/gpu_compiled.md" 2>/dev/null
[[ $PARTS == *1* && $PARTS != *2* ]] && say "next, while the machine is warm: PARTS=23 bash $0"
say "done"
