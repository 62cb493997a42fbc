"""Where one denoiser pass spends its GPU time: torch.profiler over eager passes, the kernels
ranked by device time, and how many launches a pass makes.

Why: whether a pass is launch-bound (many short kernels; CUDA graphs help) or bound by one
kernel (the scan; tuning it helps) decides what to work on next, and only a profile on the GPU
itself tells which.

    python bench/profile_pass.py                                  # small config, 256² tile
    python bench/profile_pass.py --dim 48 --blocks 4 6 6 8 --d-state 32 --rows 15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.nn import DiffMamba, DiffMambaConfig
from service.scan import active_backend
from service.scan import warmup as warm_scan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--blocks", type=int, nargs=4, default=[1, 1, 1, 1])
    p.add_argument("--d-state", type=int, default=8)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args()
    device = torch.device("cuda")
    warm_scan(device)
    torch.manual_seed(0)
    config = DiffMambaConfig.from_dict(
        {"dim": args.dim, "num_blocks": args.blocks, "d_state": args.d_state})
    net = DiffMamba(config).to(device).eval()
    x = torch.randn(args.batch, 6, args.tile, args.tile, device=device)
    t = torch.full((args.batch,), 500.0, device=device)
    with torch.inference_mode():
        for _ in range(3):
            net(x, t)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.passes):
            net(x, t)
        torch.cuda.synchronize()
        wall_ms = 1e3 * (time.perf_counter() - start) / args.passes
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.passes):
                net(x, t)
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    device_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / args.passes
    launches = sum(e.count for e in kernels) / args.passes
    print(f"dim {args.dim}, blocks {args.blocks}, d_state {args.d_state}, tile {args.tile}, "
          f"batch {args.batch}, scan {active_backend(device)}, {torch.cuda.get_device_name()}")
    print(f"wall {wall_ms:.2f} ms per pass, kernels {device_ms:.2f} ms per pass "
          f"({100 * device_ms / wall_ms:.0f} % busy), {launches:.0f} launches per pass")
    print("| kernel | ms per pass | share | launches per pass |")
    print("|---|---:|---:|---:|")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:args.rows]:
        ms = e.self_device_time_total / 1e3 / args.passes
        print(f"| {e.key[:70]} | {ms:.3f} | {100 * ms / device_ms:.1f} % | "
              f"{e.count / args.passes:.0f} |")


if __name__ == "__main__":
    main()
