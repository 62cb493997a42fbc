"""Seconds to restore one image with shipped checkpoints, as `diffmamba restore` runs it.

The speed budget for the defaults (a 512×512 image, 4 steps, ≤ 20 s on a 2-core CPU) is
about this whole path — tiles, sampler and blending — not one network pass,
so this times `service.restoration.restore_image` (every model kind's session) end to end.

    python bench/restore.py models/*.safetensors --size 512 --steps 4 --repeat 2
    python bench/restore.py models/derain.safetensors --precision fp32 bf16 --threads 1

Each precision runs through the engine the CLI builds (``checked_torch_engine``: the hardware
check, then the 45 dB check on a warm-up tile), so a bf16 row on a CPU without native bf16, or
one that fails the check, says it ran fp32; the rows of one checkpoint alternate per repeat, so
a drifting machine speed affects them alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.engines.precision import SETTINGS, psnr_db


def measure(checkpoint: Path, size: int, steps: int, repeat: int, tile: int,
            overlap: int, precisions: list[str]) -> list[dict[str, Any]]:
    import torch

    from service.engines.factory import checked_torch_engine
    from service.models import load_checkpoint
    from service.restoration import TilingPolicy, restore_image
    from service.scan import warmup

    loaded = load_checkpoint(checkpoint)
    warmup()
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    policy = TilingPolicy(tile=tile, overlap=overlap, whole_max_pixels=tile * tile)
    cpu = torch.device("cpu")
    engines = {p: checked_torch_engine(loaded, cpu, p, min(tile, 64), checkpoint.name)
               for p in precisions}

    def once(precision: str) -> torch.Tensor:
        out, _ = restore_image(loaded.model, loaded.kind, image, policy, steps=steps, seed=0,
                               run=engines[precision].run)
        return out

    for precision in precisions:  # compile kernels outside the timing
        restore_image(loaded.model, loaded.kind, image[..., :64, :64], policy, steps=1, seed=0,
                      run=engines[precision].run)
    times: dict[str, list[float]] = {p: [] for p in precisions}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(repeat):
        for precision in precisions:
            start = time.perf_counter()
            outputs[precision] = once(precision)
            times[precision].append(time.perf_counter() - start)
    reference = outputs[precisions[0]]
    return [{"checkpoint": str(checkpoint), "arch": loaded.arch, "kind": loaded.kind.name,
             "parameters": loaded.num_params, "size": size,
             "steps": steps if loaded.kind.takes_timestep else None,
             "requested": p, "precision": engines[p].precision,
             "db_vs_first": psnr_db(reference, outputs[p], data_range=1.0),
             "seconds_min": min(times[p]), "seconds": times[p],
             "threads": torch.get_num_threads()} for p in precisions]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--tile", type=int, default=512, help="tile size (default: whole 512² image)")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=SETTINGS,
                   help="precisions to compare; the first is the reference of the dB column")
    p.add_argument("--threads", type=int, default=None, help="torch and numba threads")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.threads:
        import numba
        import torch

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    rows = [row for c in args.checkpoints
            for row in measure(c, args.size, args.steps, args.repeat, args.tile, args.overlap,
                               args.precision)]
    print(f"| checkpoint | arch | parameters | precision | {args.size}² (s) | dB vs "
          f"{args.precision[0]} |")
    print("|---|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {Path(r['checkpoint']).name} | {r['arch']} | {r['parameters']:,} | "
              f"{r['precision']} | {r['seconds_min']:.2f} | {r['db_vs_first']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
