"""Where bf16 can and cannot speed a CPU pass up: single ops in fp32 vs bf16, and how much of a
whole pass is the float32 scan that bf16 leaves alone.

Why: a reduced precision speeds up only what it touches. Under the service's bf16 the
convolutions, linears and the elementwise work between them run in bf16, while the fused
selective scan (``service.scan.cross``) stays float32 by design. So the best a pass can gain is
bounded by the scan's share of it (Amdahl): with a share s and everything else k times faster,
the pass gains 1 / (s + (1 − s) / k). This prints both factors for a real checkpoint.

    python bench/bf16_split.py --checkpoint models/denoise-diffmamba.safetensors --threads 1
    python bench/bf16_split.py --dim 48 --blocks 4 6 6 8 --d-state 32 --size 128 --threads 1

Ops: the shapes of a first-level block of the published model (batch 4, 128², channels-last):
a 96 → 255 pointwise convolution, a 255-channel depthwise 3×3, a 96 → 384 linear over 65,536
rows, and GELU · gate on the FFN's hidden activations (a channel half of a channels-last tensor,
as the FFN had it before its gate copied that half densely). On a CPU without native bf16
(``amx_bf16`` / ``avx512_bf16``) the bf16 column is oneDNN's emulation.

FFN: the whole gated feed-forward block at the default's shapes, with the dense-copy gate it
uses against the plain strided one, in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from engines import random_checkpoint  # bench/engines.py: the same random config


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def op_rows(repeat: int) -> list[dict[str, Any]]:
    """Each op timed in fp32 and under bf16 autocast, alternating per repeat."""
    cl = torch.channels_last
    x = torch.randn(4, 96, 128, 128).to(memory_format=cl)
    hidden = torch.randn(4, 255, 128, 128).to(memory_format=cl)
    gate_in = torch.randn(4, 254, 128, 128).to(memory_format=cl)
    rows_in = torch.randn(65536, 96)
    pointwise = torch.nn.Conv2d(96, 255, 1).to(memory_format=cl)
    depthwise = torch.nn.Conv2d(255, 255, 3, padding=1, groups=255).to(memory_format=cl)
    linear = torch.nn.Linear(96, 384)

    def gelu_gate(h: torch.Tensor) -> torch.Tensor:
        a, b = h.chunk(2, dim=1)
        return F.gelu(a) * b

    ops: dict[str, Callable[[], object]] = {
        "pointwise conv 96→255": lambda: pointwise(x),
        "depthwise conv 3×3, 255 ch": lambda: depthwise(hidden),
        "linear 96→384, 65,536 rows": lambda: linear(rows_in),
        "GELU gate, 2×127 ch": lambda: gelu_gate(gate_in_bf16 if bf16[0] else gate_in),
    }
    gate_in_bf16 = gate_in.bfloat16()
    bf16 = [False]
    out = []
    with torch.inference_mode():
        for name, fn in ops.items():
            times: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for _ in range(repeat):
                bf16[0] = False
                times["fp32"].append(median_ms(fn, 1))
                bf16[0] = True
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    times["bf16"].append(median_ms(fn, 1))
            fp32, low = statistics.median(times["fp32"]), statistics.median(times["bf16"])
            out.append({"op": name, "fp32_ms": fp32, "bf16_ms": low, "speedup": fp32 / low})
    return out


def ffn_rows(repeat: int) -> list[dict[str, Any]]:
    """FFN block ms with the shipped gate (dense copy of the GELU half) and the strided one."""
    from service.nn.ffn import GatedDConvFeedForward

    dense = GatedDConvFeedForward.gate_out

    def strided(self: GatedDConvFeedForward, hidden: torch.Tensor) -> torch.Tensor:
        x1, x2 = hidden.chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)

    gates = {"strided": strided, "dense": dense}
    out = []
    cl = torch.channels_last
    try:
        for channels, side in ((16, 256), (32, 128), (48, 128), (96, 64)):
            torch.manual_seed(0)
            block = GatedDConvFeedForward(channels, 2.66, bias=False).to(memory_format=cl)
            x = torch.randn(1, channels, side, side).to(memory_format=cl)
            times: dict[str, list[float]] = {}
            with torch.inference_mode():
                for _ in range(repeat):
                    for precision in ("fp32", "bf16"):
                        for name, gate in gates.items():
                            GatedDConvFeedForward.gate_out = gate  # type: ignore[method-assign]
                            with torch.autocast("cpu", dtype=torch.bfloat16,
                                                enabled=precision == "bf16"):
                                times.setdefault(f"{precision}_{name}", []).append(
                                    median_ms(lambda b=block, x=x: b(x), 1))
            row: dict[str, Any] = {"shape": [1, channels, side, side]}
            row.update({k: statistics.median(v) for k, v in times.items()})
            out.append(row)
    finally:
        GatedDConvFeedForward.gate_out = dense  # type: ignore[method-assign]
    return out


def scan_share(checkpoint: Path, size: int, repeat: int) -> list[dict[str, Any]]:
    """Per precision: pass ms, of which inside the fused float32 scan, and the Amdahl bound."""
    from service.engines.eager import TorchEngine
    from service.engines.warmup import warmup_inputs
    from service.models import load_checkpoint
    from service.scan import cross

    spent = [0.0]
    inner = cross._forward

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    cross._forward = timed_forward  # type: ignore[assignment]
    loaded = load_checkpoint(checkpoint)
    x, t = warmup_inputs(loaded.kind, size, 1)
    engines = {p: TorchEngine(loaded.model, loaded.kind, torch.device("cpu"), p)
               for p in ("fp32", "bf16")}
    rows = {p: {"pass": [], "scan": []} for p in engines}
    for engine in engines.values():
        engine.run(x, t)
    for _ in range(repeat):
        for precision, engine in engines.items():
            spent[0] = 0.0
            start = time.perf_counter()
            engine.run(x, t)
            rows[precision]["pass"].append((time.perf_counter() - start) * 1e3)
            rows[precision]["scan"].append(spent[0] * 1e3)
    cross._forward = inner  # type: ignore[assignment]
    out = []
    for precision, r in rows.items():
        total, scan = statistics.median(r["pass"]), statistics.median(r["scan"])
        out.append({"precision": precision, "pass_ms": total, "scan_ms": scan,
                    "rest_ms": total - scan, "scan_share": scan / total})
    share = out[0]["scan_share"]
    for row in out:
        # The bound if everything but the scan became the op table's best factor.
        row["bound_if_rest_3x"] = 1.0 / (share + (1 - share) / 3.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a Diff-Mamba or VmambaIR checkpoint (default: random --dim config)")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--blocks", type=int, nargs=4, default=[1, 1, 1, 1])
    p.add_argument("--d-state", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="tile side of the pass")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-ops", action="store_true", help="skip the single-op table")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    from service.engines.precision import cpu_has_bf16

    result: dict[str, Any] = {"native_bf16": cpu_has_bf16(), "threads": torch.get_num_threads()}
    if not args.no_ops:
        result["ops"] = op_rows(args.repeat)
        print("| op | fp32 (ms) | bf16 (ms) | speed-up |\n|---|---:|---:|---:|")
        for r in result["ops"]:
            print(f"| {r['op']} | {r['fp32_ms']:.1f} | {r['bf16_ms']:.1f} | {r['speedup']:.2f}× |")
        result["ffn"] = ffn_rows(args.repeat)
        print("\n| FFN block | fp32 strided gate | fp32 dense gate | bf16 strided | bf16 dense |")
        print("|---|---:|---:|---:|---:|")
        for r in result["ffn"]:
            print(f"| {tuple(r['shape'])} | {r['fp32_strided']:.1f} | {r['fp32_dense']:.1f} | "
                  f"{r['bf16_strided']:.1f} | {r['bf16_dense']:.1f} |")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_checkpoint(Path(tmp), args.dim, args.blocks,
                                                          args.d_state)
        result["checkpoint"] = str(args.checkpoint or f"random dim {args.dim}")
        result["size"] = args.size
        result["pass"] = scan_share(checkpoint, args.size, args.repeat)
    print(f"\n{result['checkpoint']}, {args.size}² pass, native bf16: {result['native_bf16']}, "
          f"threads {result['threads']}")
    print("| precision | pass (ms) | in the fp32 scan (ms) | rest (ms) | scan share |")
    print("|---|---:|---:|---:|---:|")
    for r in result["pass"]:
        print(f"| {r['precision']} | {r['pass_ms']:.1f} | {r['scan_ms']:.1f} | "
              f"{r['rest_ms']:.1f} | {r['scan_share']:.0%} |")
    fp32, bf16 = result["pass"]
    print(f"pass speed-up {fp32['pass_ms'] / bf16['pass_ms']:.2f}×, rest "
          f"{fp32['rest_ms'] / bf16['rest_ms']:.2f}×; bound with the rest 3× faster: "
          f"{fp32['bound_if_rest_3x']:.2f}×")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
