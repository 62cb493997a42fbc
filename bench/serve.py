"""End-to-end service throughput and latency, dynamic batching on vs off, in one run.

Starts ``diffmamba serve`` as a subprocess per mode (same models, same port range), drives
``--concurrency`` clients (httpx, asyncio) for a fixed ``--requests`` count of ``--size``² images,
and prints p50/p95/p99 latency and throughput. "off" is ``max_batch=1``.

    python bench/serve.py                                     # random small model, 128², conc. 8
    python bench/serve.py --models models/ --task derain --size 256 --requests 32
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from server_ready import wait_ready

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _random_models_dir(root: Path, task: str, config: dict[str, Any]) -> Path:
    """Random weights cost exactly what trained ones do: enough for a throughput benchmark."""
    import torch

    from service.models import write_safetensors
    from service.nn import DiffMamba, DiffMambaConfig

    torch.manual_seed(0)
    cfg = DiffMambaConfig.from_dict(config)
    models = root / "models"
    models.mkdir()
    write_safetensors(models / f"{task}.safetensors", DiffMamba(cfg).state_dict(), "diffmamba",
                      cfg.to_dict())
    return models


def _image(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def _drive(url: str, task: str, images: list[bytes], concurrency: int,
                 steps: int) -> tuple[list[float], float, list[int]]:
    latencies: list[float] = []
    statuses: list[int] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for img in images:
        queue.put_nowait(img)

    async def client(http: httpx.AsyncClient, worker: int) -> None:
        while not queue.empty():
            img = queue.get_nowait()
            start = time.perf_counter()
            r = await http.post(f"{url}/restore", params={"task": task, "steps": steps,
                                                         "seed": worker},
                                content=img, headers={"Content-Type": "image/png"})
            latencies.append(time.perf_counter() - start)
            statuses.append(r.status_code)

    async with httpx.AsyncClient(timeout=600) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http, i) for i in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, wall, statuses


def run_mode(name: str, env_extra: dict[str, str], args: argparse.Namespace,
             models: Path) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DIFFMAMBA_MODELS_DIR": str(models), "DIFFMAMBA_DEVICE": args.device,
           "DIFFMAMBA_MAX_QUEUE_SIZE": "4096", "DIFFMAMBA_REQUEST_TIMEOUT_S": "3600",
           **env_extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
         "--log-level", "warning"], env=env, cwd=ROOT,
    )
    try:
        wait_ready(url, proc, timeout=300)
        warm = [_image(args.size, 10_000 + i) for i in range(args.concurrency)]
        asyncio.run(_drive(url, args.task, warm, args.concurrency, args.steps))
        images = [_image(args.size, i) for i in range(args.requests)]
        lat, wall, statuses = asyncio.run(
            _drive(url, args.task, images, args.concurrency, args.steps))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))]

    return {"mode": name, **env_extra, "requests": len(lat), "ok": statuses.count(200),
            "wall_s": wall, "throughput_rps": len(lat) / wall, "p50_s": pct(50),
            "p95_s": pct(95), "p99_s": pct(99), "mean_s": statistics.fmean(lat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="models dir (default: a random small model)")
    parser.add_argument("--task", default="derain")
    parser.add_argument("--config", default='{"dim": 16, "num_blocks": [1, 1, 1, 1], '
                        '"d_state": 8}', help="config of the random model (JSON)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or _random_models_dir(Path(tmp), args.task, json.loads(args.config))
        rows = [
            run_mode("batching off", {"DIFFMAMBA_MAX_BATCH": "1"}, args, models),
            run_mode("batching on", {"DIFFMAMBA_MAX_BATCH": str(args.max_batch),
                                     "DIFFMAMBA_MAX_QUEUE_DELAY_MS": str(args.delay_ms)},
                     args, models),
        ]
    base = rows[0]["throughput_rps"]
    print(f"{args.requests} requests of {args.size}², {args.steps} steps, concurrency "
          f"{args.concurrency}, device {args.device}")
    print("| mode | max batch | ok | throughput (req/s) | speed-up | p50 (s) | p95 (s) | p99 (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['DIFFMAMBA_MAX_BATCH']} | {r['ok']}/{r['requests']} |"
              f" {r['throughput_rps']:.2f} | {r['throughput_rps'] / base:.2f}× |"
              f" {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
