"""Tile sizes of the Triton scan kernels: ms per forward and forward+backward for each
(BLOCK_L, TILE_ELEMENTS, sequence split) at one layer's shape, to choose the defaults on a GPU.

Why a sweep: the best split of a program's register tile between channels (BLOCK_D, which share
one read of B and C) and sequence steps (BLOCK_L, the associative scan's length) depends on
d_state and on the chip, and can only be measured there. The defaults in
service/scan/triton_kernel.py come from this script's output on the lent GPU.

    python bench/triton_tiles.py                                   # published level 1, 256² tile
    python bench/triton_tiles.py --channels 128 --state 8 --batch 8 --json tiles.json
    python bench/triton_tiles.py --channels 128 --state 8 --splits 0 1 8 32 128  # 0 = auto
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.scan import triton_kernel
from service.scan.chunked import selective_scan_chunked


def inputs(args: argparse.Namespace, grad: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, n, k, length = args.batch, args.channels, args.state, args.groups, args.length
    shapes = {"u": (b, d, length), "delta": (b, d, length), "A": (d, n), "B": (b, k, n, length),
              "C": (b, k, n, length), "D": (d,), "delta_bias": (d,)}
    out = {name: torch.randn(shape, device="cuda", generator=g) for name, shape in shapes.items()}
    out["A"] = -torch.exp(out["A"])
    out["delta"] = out["delta"] - 2.0
    return {name: t.requires_grad_(grad) for name, t in out.items()}


def timed_ms(fn: Any, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels", type=int, default=384, help="K·d_inner (published level 1)")
    p.add_argument("--length", type=int, default=256 * 256)
    p.add_argument("--state", type=int, default=32)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--block-l", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--tile", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--splits", type=int, nargs="+", default=[0],
                   help="forward stretches per sequence; 0 = the kernel's own choice")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    x = inputs(args, grad=False)
    xg = inputs(args, grad=True)
    with torch.no_grad():
        expected = selective_scan_chunked(**x)
    rows = []
    for block_l, tile, splits in itertools.product(args.block_l, args.tile, args.splits):
        triton_kernel.BLOCK_L, triton_kernel.TILE_ELEMENTS = block_l, tile
        layout = triton_kernel._layout(x["u"], x["A"], x["B"], splits or None)
        row: dict[str, Any] = {"block_l": block_l, "tile": tile, "block_d": layout["block_d"],
                               "splits": layout["splits"], "auto": splits == 0}
        scan = functools.partial(triton_kernel.selective_scan_triton, splits=splits or None)
        try:
            with torch.no_grad():
                row["max_err"] = float((scan(**x) - expected).abs().max())
                row["fwd_ms"] = timed_ms(lambda scan=scan: scan(**x), args.repeat)
            row["fwd_bwd_ms"] = timed_ms(lambda scan=scan: scan(**xg).sum().backward(),
                                         args.repeat)
        except Exception as exc:  # e.g. out of registers/shared memory at this size
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"(b, D, L, N, G) = ({args.batch}, {args.channels}, {args.length}, {args.state}, "
          f"{args.groups}) on {torch.cuda.get_device_name()}")
    print("| BLOCK_L | tile | BLOCK_D | splits | forward (ms) | forward+backward (ms) | max err |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        head = (f"| {r['block_l']} | {r['tile']} | {r['block_d']} | "
                f"{r['splits']}{' (auto)' if r['auto'] else ''} |")
        if "error" in r:
            print(f"{head} {r['error']} | | |")
        else:
            print(f"{head} {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {r['max_err']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
