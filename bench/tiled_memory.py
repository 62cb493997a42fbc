"""Tiled restoration of a large image: wall time and peak RSS (the memory bound tiling buys).

The whole-image state (a few image-sized float32 tensors) stays on the host; only a batch of
``max_batch`` tiles goes through the network at a time, so peak memory depends on the tile batch,
not on the image. Target on CPU: a 2048² image under 3 GB peak RSS.

``--max-batch`` defaults to 1 here: on a CPU a batch of tiles is no faster per tile than one at a
time (measured 2.6 s/tile at batch 1 vs 3.5 s at 8 for dim 16 at 256², 2 cores) while the peak
grows with it (~0.9 GB at 1, ~3.6 GB at 8). Batching pays on a GPU (``restore_tiled`` defaults
to 8).

    python bench/tiled_memory.py                                  # 2048², dim 16, tile 256/32, S=4
    python bench/tiled_memory.py --size 1024 --max-batch 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_image(size: int, pattern: str, seed: int = 0) -> Any:
    """(1, 3, size, size) in [0, 1]: smooth colour waves, or uniform noise."""
    import torch

    if pattern == "random":
        return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    channels = [
        0.5 + 0.5 * torch.sin(2 * math.pi * (f * xx + g * yy) + p)
        for f, g, p in ((3.0, 1.0, 0.0), (1.5, 4.0, 1.0), (5.0, 2.5, 2.0))
    ]
    return torch.stack(channels)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--num-blocks", type=int, nargs=4, default=[1, 1, 1, 1])
    parser.add_argument("--d-state", type=int, default=8)
    parser.add_argument("--pattern", choices=["smooth", "random"], default="smooth")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()

    import torch

    from service.nn import DiffMamba, DiffMambaConfig
    from service.scan import active_backend, warmup
    from service.tiling import TiledRestoration, restore_tiled

    torch.manual_seed(0)
    config = DiffMambaConfig(dim=args.dim, num_blocks=tuple(args.num_blocks), d_state=args.d_state)
    model = DiffMamba(config).eval().to(args.device)
    warmup()
    with torch.inference_mode():  # compile/load kernels before the baseline
        model(torch.rand(1, 6, 16, 16, device=args.device), torch.tensor([500.0]))
    cond = synthetic_image(args.size, args.pattern)
    probe = TiledRestoration(
        cond, steps=args.steps, seed=args.seed, tile=args.tile, overlap=args.overlap
    )
    base_rss = _peak_rss_mb()
    print(
        f"{args.size}² image, {probe.num_tiles} tiles of {probe.tile_shape}, "
        f"{probe.num_steps} passes each, batch {args.max_batch}, "
        f"scan backend {active_backend(torch.device(args.device))}, "
        f"{torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    del probe

    step_times: list[float] = []
    start = time.perf_counter()

    def on_step(i: int, n: int) -> None:
        step_times.append(time.perf_counter() - start)
        print(
            f"  step {i}/{n} at {step_times[-1]:.1f} s, peak RSS {_peak_rss_mb():.0f} MB",
            file=sys.stderr,
        )

    out = restore_tiled(
        model,
        cond,
        steps=args.steps,
        seed=args.seed,
        tile=args.tile,
        overlap=args.overlap,
        max_batch=args.max_batch,
        device=args.device,
        on_step=on_step,
    )
    wall = time.perf_counter() - start
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    result = {
        "size": args.size,
        "tile": args.tile,
        "overlap": args.overlap,
        "steps": args.steps,
        "max_batch": args.max_batch,
        "config": config.to_dict(),
        "device": args.device,
        "scan_backend": active_backend(torch.device(args.device)),
        "threads": torch.get_num_threads(),
        "wall_s": wall,
        "step_s": step_times,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_mb": base_rss,
        "output_finite": bool(torch.isfinite(out).all()),
    }
    if args.device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result, indent=2))
    print(
        f"{args.size}² in {wall:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB "
        f"(target < 3072 MB, {result['rss_before_mb']:.0f} MB before sampling)",
        file=sys.stderr,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
