#!/usr/bin/env bash
# Prepare what bench/gpu_session.sh needs on a GPU machine that reaches no package index:
#   .whl/      the service's pure-Python dependencies that the CUDA image lacks, as cp312 wheels
#              (the versions installed here, so both sides run the same code);
#   .gpu/pool  the clean training pool as JPEG (quality 95, 4:4:4): the PNG pool is over the
#              64 MiB a call may carry together with the repository.
# Both folders are ignored by git (.git/info/exclude) and travel with `carry`.
#   bash bench/gpu_prepare.sh            # after: diffmamba data build --output data/pool
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
pins=$(python -m pip list --format=freeze 2>/dev/null | grep -iE '^(fastapi|starlette|pydantic|pydantic[-_]core|pydantic[-_]settings|python[-_]dotenv|python[-_]multipart|typing[-_]inspection|typing[-_]extensions|uvicorn|annotated[-_]types|opentelemetry[-_]api)==')
# shellcheck disable=SC2086
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $pins
if [ -d data/pool/train ]; then
    python - <<'PY'
from pathlib import Path
import shutil
from PIL import Image
src, dst = Path("data/pool"), Path(".gpu/pool")
for split in ("train", "val"):
    (dst / split).mkdir(parents=True, exist_ok=True)
    for p in sorted((src / split).iterdir()):
        Image.open(p).convert("RGB").save(dst / split / f"{p.stem}.jpg", quality=95, subsampling=0)
for f in src.iterdir():
    if f.is_file():
        shutil.copy(f, dst / f.name)
PY
fi
du -sh .whl .gpu 2>/dev/null
