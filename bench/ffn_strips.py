"""The gated feed-forward in cache-sized strips against the whole-image form, on the CPU.

Block: one first-level block (1, 32, 256, 256), channels-last, whole image vs strips of 8, 16,
32, 64 rows. Pass: the small Diff-Mamba (dim 16) at 256² and 512², strips at the default
STRIP_BYTES vs strips switched off, interleaved round by round (this VM's speed drifts).
Outputs are compared too: the strip form is the same function, bit for bit on this CPU.

    python bench/ffn_strips.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import interleaved  # bench/engines.py: the same round-by-round timing

from service.nn import DiffMamba, DiffMambaConfig, ffn
from service.nn.resample import use_channels_last
from service.scan import warmup

OFF = 1 << 60  # STRIP_BYTES that no image reaches: the whole-image form


def with_strip_bytes(value: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        ffn.STRIP_BYTES = value
        return fn()

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warmup(torch.device("cpu"))
    default = ffn.STRIP_BYTES
    torch.manual_seed(0)
    block = ffn.GatedDConvFeedForward(32).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 32, 256, 256).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = block.gate_out(block.dwconv(block.project_in(x)))
        fns: dict[str, Callable[[], object]] = {
            "whole": lambda: block.gate_out(block.dwconv(block.project_in(x)))}
        for rows in (8, 16, 32, 64):
            diff = float((block.forward_strips(x, rows) - want).abs().max())
            print(f"block, {rows}-row strips: max difference {diff:.1e}")
            fns[f"{rows} rows"] = lambda rows=rows: block.forward_strips(x, rows)
        times = interleaved(fns, args.rounds, sync=False)
    print("| block (1, 32, 256, 256) | ms (median) |\n|---|---:|")
    for k, v in times.items():
        print(f"| {k} | {1e3 * statistics.median(v):.1f} |")

    net = use_channels_last(DiffMamba(DiffMambaConfig.from_dict(
        {"dim": 16, "num_blocks": [1, 1, 1, 1], "d_state": 8})).eval())
    print("| pass | whole (ms) | strips (ms) | paired speed-up | max difference |")
    print("|---|---:|---:|---:|---:|")
    for size in (256, 512):
        xs, t = torch.randn(1, 6, size, size), torch.tensor([500.0])
        with torch.inference_mode():
            outs = [with_strip_bytes(v, lambda xs=xs, t=t: net(xs, t))() for v in (OFF, default)]
            runs = interleaved({"whole": with_strip_bytes(OFF, lambda xs=xs, t=t: net(xs, t)),
                                "strips": with_strip_bytes(default, lambda xs=xs, t=t: net(xs, t))},
                               max(3, args.rounds if size == 256 else args.rounds // 2), sync=False)
        speedup = statistics.median(
            [w / s for w, s in zip(runs["whole"], runs["strips"], strict=True)])
        print(f"| {size}² | {1e3 * statistics.median(runs['whole']):.1f} | "
              f"{1e3 * statistics.median(runs['strips']):.1f} | {speedup:.2f}× | "
              f"{float((outs[0] - outs[1]).abs().max()):.1e} |")
    ffn.STRIP_BYTES = default


if __name__ == "__main__":
    main()
