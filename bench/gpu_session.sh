#!/usr/bin/env bash
# One lease of a CUDA machine, as one command. PARTS picks what runs, in this order:
#   scan      — scan kernels: parity and ms of every backend;
#   tiles     — the Triton tile/split sweep at the published and the small model's level-1 shape;
#   profile   — where an eager pass spends its GPU time (small and published configs);
#   engines   — engines side by side (small and published size; chunked scan with "chunked");
#   serve     — the service's batching on vs off;
#   tests     — the CUDA tests (engines, scan, Triton kernels on the GPU);
#   train     — a time-boxed two-stage fine-tuning of the shipped defaults (bench/gpu_train.py), or
#               with MODEL_ARGS="--dim … --blocks …" a from-scratch run of that config.
# "bench" stands for "scan tiles profile engines serve". Benchmarks run alone, so timings are clean.
# Everything lands in $OUT/results.tgz (tables, JSON, logs), fine-tuned weights beside it.
# Packages the machine lacks travel as wheels in .whl/ and the clean pool as JPEGs in
# .gpu/pool (README, "Measuring on a GPU"):   PARTS="bench tests" bash bench/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-session}
PARTS=" ${PARTS:-bench tests train} "
PARTS=${PARTS/ bench / scan tiles profile engines serve }
TRAIN_S=${TRAIN_S:-370}
R=$OUT/r
mkdir -p "$R"
trap 'tar czf "$OUT/results.tgz" --exclude="*.pth" --exclude=state.pt --exclude="*.safetensors" \
      -C "$OUT" r && rm -rf "$R"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD PYTHONWARNINGS=ignore
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, triton, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'ort', o.__version__, o.get_available_providers())"
    python3 -c "import tensorrt" 2>&1 | tail -1
    python3 -c "import mamba_ssm" 2>&1 | tail -1
    nproc
} > "$R/env.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...: bounded, logged, never fatal
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$R/$name.txt" 2>&1
    echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$R/steps.txt"
}
has() { [[ $PARTS == *" $1 "* ]]; }
if has scan; then
    step scan 30 python3 bench/scan.py --repeat 5 --ref-repeat 1 --json "$R/scan.json"
fi
if has tiles; then
    step tiles_small 60 python3 bench/triton_tiles.py --channels 128 --state 8 --block-l 64 \
        --tile 2048 --splits 0 1 8 32 128 --json "$R/tiles_small.json"
    step tiles_published 60 python3 bench/triton_tiles.py --block-l 32 64 --tile 2048 \
        --splits 0 1 --json "$R/tiles_published.json"
fi
if has profile; then
    step profile_small 40 python3 bench/profile_pass.py
    step profile_published 50 python3 bench/profile_pass.py --dim 48 --blocks 4 6 6 8 --d-state 32
fi
if has engines; then
    step engines_small 70 python3 bench/engines.py --device cuda --repeat 10 \
        --engines eager cuda_graphs bf16 fp16 --batches 1 4 8 16 --json "$R/engines_small.json"
fi
if has serve; then
    step serve 60 python3 bench/serve.py --device cuda --requests 64 --concurrency 8 \
        --json "$R/serve.json"
fi
if has tests; then
    step pytest 60 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_engines.py \
        tests/test_scan.py tests/test_scan_triton.py
fi
if has engines; then
    step engines_published 60 python3 bench/engines.py --device cuda --dim 48 --blocks 4 6 6 8 \
        --d-state 32 --engines eager cuda_graphs bf16 --batches 1 4 8 --repeat 5 \
        --json "$R/engines_published.json"
fi
if has chunked; then
    step engines_chunked 35 env DIFFMAMBA_SCAN=chunked python3 bench/engines.py --device cuda \
        --engines eager cuda_graphs --batches 1 8 --repeat 3 --json "$R/engines_chunked.json"
fi
if has train; then
    step train "$TRAIN_S" python3 bench/gpu_train.py --device cuda --clean .gpu/pool \
        --out "$R/train" --stage1-s $((TRAIN_S * 6 / 10)) --stage2-s $((TRAIN_S * 3 / 10 - 10)) \
        ${MODEL_ARGS:+--model-args "$MODEL_ARGS"}
    cp "$R"/train/*-s2.safetensors "$OUT/" 2>/dev/null
fi
cat "$R/steps.txt"
