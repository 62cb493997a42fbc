#!/usr/bin/env bash
# One lease of a CUDA machine, as one command: GPU benchmarks first (nothing else running), then
# the CUDA tests beside a time-boxed fine-tuning of the shipped defaults (bench/gpu_train.py).
# Everything lands in $OUT: results.tgz (tables, JSON, logs) and the fine-tuned weights.
#
# Packages the machine lacks travel as wheels in .whl/ and the clean pool as JPEGs in
# .gpu/pool (README, "Measuring on a GPU"):  bash bench/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu-session}
DEVICE=${DEVICE:-cuda}
TRAIN_S=${TRAIN_S:-370}
R=$OUT/r
mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
{
    nvidia-smi
    python3 -c "import torch, onnxruntime as o; print(torch.__version__, torch.version.cuda, o.__version__, o.get_available_providers())"
    python3 -c "import tensorrt" 2>&1 | tail -1
    python3 -c "import mamba_ssm" 2>&1 | tail -1
    nproc
} > "$R/env.txt" 2>&1
timeout 70 python3 bench/engines.py --device "$DEVICE" --batches 1 4 8 16 --repeat 10 \
    --json "$R/engines_small.json" > "$R/engines_small.txt" 2>&1
timeout 60 python3 bench/engines.py --device "$DEVICE" --dim 48 --blocks 4 6 6 8 --d-state 32 \
    --engines eager cuda_graphs bf16 --batches 1 4 8 --repeat 5 \
    --json "$R/engines_published.json" > "$R/engines_published.txt" 2>&1
timeout 60 python3 bench/serve.py --device "$DEVICE" --requests 64 --concurrency 8 \
    --json "$R/serve.json" > "$R/serve.txt" 2>&1
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_engines.py tests/test_scan.py \
    > "$R/pytest.txt" 2>&1 &
timeout "$TRAIN_S" python3 bench/gpu_train.py --device "$DEVICE" --clean .gpu/pool \
    --out "$R/train" --stage1-s $((TRAIN_S * 6 / 10)) --stage2-s $((TRAIN_S * 3 / 10 - 10)) \
    > "$R/train.txt" 2>&1
wait
cp "$R"/train/*-s2.safetensors "$OUT/" 2>/dev/null
tar czf "$OUT/results.tgz" --exclude='*.pth' --exclude='state.pt' --exclude='*.safetensors' \
    -C "$OUT" r
tail -n 30 "$R"/*.txt
