"""The fused CPU scan's forward (service.scan.cross) at each block width: state updates per
second, and its output against the 16-channel blocks'.

Why: a task scans a block of W channels through all four directions, and each step does N
independent W-wide updates whose exp and running output sum have latencies that one vector's
worth of work cannot hide. Wider blocks add independent work per step; fewer, wider tasks can
leave threads idle, so the service picks the widest block that still gives each thread a task
(``service.scan.cross.forward_lanes``). Widths are interleaved per round.

    python bench/scan_lanes.py --threads 1
    python bench/scan_lanes.py --threads 2 --json runs/bench/scan_lanes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba
import torch

from service.scan import cross

# (batch, height, width, channels, state N, Δ rank R): the level shapes of the shipped default
# (d_inner 32 at 256², 64 at 128², N 8) and of the published size (96 at 128², 192 at 64², N 32).
SHAPES = [(1, 256, 256, 32, 8, 2), (1, 128, 128, 64, 8, 4), (1, 128, 128, 96, 32, 6),
          (1, 64, 64, 192, 32, 12), (4, 64, 64, 32, 8, 2)]


def inputs(batch: int, height: int, width: int, channels: int, n_state: int,
           rank: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, height, width, channels, generator=g)
    xdbl = torch.randn(batch, height, width, 4 * (rank + 2 * n_state), generator=g) * 0.3
    dtw = torch.randn(4, rank, channels, generator=g) * 0.3
    dtb = torch.randn(4, channels, generator=g) * 0.3 - 2.0
    A = -torch.rand(4, n_state, channels, generator=g) * 4.0
    Ds = torch.ones(4, channels)
    return u, xdbl, dtw, dtb, A, Ds


def measure(shape: tuple[int, ...], widths: list[int], rounds: int) -> dict[str, Any]:
    args = inputs(*shape)
    batch, height, width, channels, n_state, _ = shape
    updates = batch * height * width * channels * n_state * 4
    times: dict[int, list[float]] = {w: [] for w in widths}
    outputs: dict[int, torch.Tensor] = {}
    saved = cross.FORWARD_LANES
    try:
        for w in widths:  # compile and warm
            cross.FORWARD_LANES = (w,)
            outputs[w], _ = cross._forward(*args, store_checkpoints=False)
        for _ in range(rounds):
            for w in widths:
                cross.FORWARD_LANES = (w,)
                start = time.perf_counter()
                cross._forward(*args, store_checkpoints=False)
                times[w].append(time.perf_counter() - start)
    finally:
        cross.FORWARD_LANES = saved
    base = outputs[widths[0]]
    return {"shape": list(shape),
            "ms": {w: statistics.median(t) * 1e3 for w, t in times.items()},
            "g_updates_s": {w: updates / statistics.median(t) / 1e9 for w, t in times.items()},
            "max_abs_diff": {w: float((outputs[w] - base).abs().max()) for w in widths},
            "chosen": cross.forward_lanes(batch, channels, numba.get_num_threads())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    rows = [measure(s, args.widths, args.rounds) for s in SHAPES]
    head = " | ".join(f"W={w} (G/s)" for w in args.widths)
    print(f"threads {args.threads}\n| (b, H, W, D, N, R) | {head} | chosen W | max |Δy| |")
    print("|---|" + "---:|" * (len(args.widths) + 2))
    for r in rows:
        rates = " | ".join(f"{r['g_updates_s'][w]:.2f}" for w in args.widths)
        diff = max(r["max_abs_diff"].values())
        print(f"| {tuple(r['shape'])} | {rates} | {r['chosen']} | {diff:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
