"""Seconds to restore one image with shipped checkpoints, as `diffmamba restore` runs it.

The issue's speed budget for the defaults (a 512×512 image, 4 steps, ≤ 20 s on the 2-core
development CPU) is about this whole path — tiles, sampler and blending — not one network pass,
so this times `service.restoration.restore_image` (every model kind's session) end to end.

    python bench/restore.py models/*.safetensors --size 512 --steps 4 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def measure(checkpoint: Path, size: int, steps: int, repeat: int, tile: int,
            overlap: int) -> dict[str, Any]:
    import torch

    from service.models import load_checkpoint
    from service.restoration import TilingPolicy, restore_image
    from service.scan import warmup

    loaded = load_checkpoint(checkpoint)
    warmup()
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    policy = TilingPolicy(tile=tile, overlap=overlap, whole_max_pixels=tile * tile)

    def once() -> None:
        restore_image(loaded.model, loaded.kind, image, policy, steps=steps, seed=0)

    # compile kernels outside the timing
    restore_image(loaded.model, loaded.kind, image[..., :64, :64], policy, steps=1, seed=0)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return {"checkpoint": str(checkpoint), "arch": loaded.arch, "kind": loaded.kind.name,
            "parameters": loaded.num_params, "size": size,
            "steps": steps if loaded.kind.takes_timestep else None,
            "seconds_min": min(times), "seconds": times, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--tile", type=int, default=512, help="tile size (default: whole 512² image)")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = [measure(c, args.size, args.steps, args.repeat, args.tile, args.overlap)
            for c in args.checkpoints]
    print(f"| checkpoint | arch | parameters | {args.size}² (s) |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(f"| {Path(r['checkpoint']).name} | {r['arch']} | {r['parameters']:,} | "
              f"{r['seconds_min']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
