"""Engines side by side: ms per denoiser pass and per 4-step tile, and the speed-up over eager.

Each engine is built the way the service builds it (service.engines.build_engine: export, cache,
compile or capture), warmed, then timed on the same inputs:

* pass     — one network pass on a batch-1 tile (median of --repeat),
* tile     — a whole --steps DDIM restoration of one tile-sized image (TiledRestoration, one
             tile, so per-step blending is included), median of --repeat,
* tiles/s  — throughput at each --batches size (GPU by default; --batches on the CPU too).

Interleaved: all engines are built first, then each round times every engine once (in a rotating
order), and a speed-up is the median over rounds of eager's time / the engine's time in the same
round. On a shared machine whose speed drifts by ±15 % over minutes (this project's development
VM), timing one engine after the other let the drift pass for a speed-up; pairing by round
cancels it.

CPU cases: eager (numba scan), bf16 (autocast, scan mixers in fp32, as the service builds it: fp32
when this CPU has no native bf16), compile, onnxruntime; ``bf16_forced`` runs bf16 without the
hardware and 45 dB checks, to measure emulated bf16 on a CPU without amx_bf16/avx512_bf16. CUDA
cases: eager, cuda_graphs, bf16 and fp16 (CUDA graphs under autocast, scan mixers in fp32),
onnxruntime (TensorRT/CUDA provider) and tensorrt. Engines that cannot run here are listed as
skipped with the reason. Each row also gives the precision the engine runs and its pass output's
PSNR against eager fp32 (the service's 45 dB check).

    python bench/engines.py                               # small random config, 256 tile, CPU
    python bench/engines.py --engines eager onnxruntime --repeat 5 --threads 2
    python bench/engines.py --device cuda --batches 1 4 8 16 --json engines.json
    python bench/engines.py --checkpoint models/denoise-diffmamba.safetensors

Timing on a shared machine: --threads 1 makes every engine single-threaded and the comparison
fairer under load (see bench/contention.py for how a pass degrades when it shares the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from service.engines import EngineOptions, TorchEngine, build_engine, psnr_db
from service.engines.base import Engine
from service.engines.warmup import warmup_image, warmup_inputs
from service.models import LoadedModel, load_checkpoint, write_safetensors

CPU_ENGINES = ("eager", "bf16", "compile", "onnxruntime")
CUDA_ENGINES = ("eager", "cuda_graphs", "bf16", "fp16", "onnxruntime", "tensorrt")
# bench case -> (service engine, precision, CUDA graphs)
CASES: dict[str, tuple[str, str, bool]] = {
    "eager": ("torch", "fp32", False),
    "cuda_graphs": ("torch", "fp32", True),
    "bf16": ("torch", "bf16", True),
    "fp16": ("torch", "fp16", True),
    "compile": ("compile", "fp32", False),
    "onnxruntime": ("onnxruntime", "fp32", False),
    "tensorrt": ("tensorrt", "fp32", False),
    "bf16_forced": ("torch", "bf16", False),
}


def random_checkpoint(directory: Path, dim: int, blocks: list[int], d_state: int) -> Path:
    from service.nn import DiffMamba, DiffMambaConfig

    torch.manual_seed(0)
    config = DiffMambaConfig.from_dict({"dim": dim, "num_blocks": blocks, "d_state": d_state})
    path = directory / "bench.safetensors"
    write_safetensors(path, DiffMamba(config).state_dict(), "diffmamba", config.to_dict())
    return path


def restore_tile(engine: Engine, loaded: LoadedModel, tile: int, steps: int) -> None:
    """One tile-sized image through the tiled sampler, or one pass for single-pass models."""
    from service.tiling import TiledRestoration

    image = warmup_image(tile)[None]
    if not loaded.kind.takes_timestep:
        engine.run(image, None)
        return
    session = TiledRestoration(image, steps=steps, seed=0, tile=tile, overlap=0)
    while not session.done:
        inputs, t, _ = session.step_inputs()
        eps = engine.run(torch.stack(inputs), torch.full((len(inputs),), float(t)))
        session.advance(list(eps))
    session.result()


def build(case: str, checkpoint: Path, device: torch.device, args: argparse.Namespace,
          cache_dir: Path) -> dict[str, Any]:
    name, precision, graphs = CASES[case]
    loaded = load_checkpoint(checkpoint, device=device)  # fresh model: engines wrap modules
    options = EngineOptions(engine=name, precision=precision, tile=args.tile,
                            max_batch=max(args.batches), cache_dir=cache_dir, cuda_graphs=graphs)
    start = time.perf_counter()
    if case == "bf16_forced":
        engine: Engine = TorchEngine(loaded.model, loaded.kind, device, "bf16")
    else:
        engine = build_engine(loaded, device, options, checkpoint, label=case)
    engine.warm_up()
    return {"engine": engine, "loaded": loaded, "build_s": time.perf_counter() - start}


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, sync: bool
                ) -> dict[str, list[float]]:
    """Seconds per call of each function, one call of each per round, order rotated by round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # first calls (allocations, lazy inits) are not timed
        fns[n]()
    for r in range(repeat):
        for n in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[n]()
            if sync:
                torch.cuda.synchronize()
            times[n].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def paired_speedup(eager: list[float], other: list[float]) -> float:
    return median([e / o for e, o in zip(eager, other, strict=True)])


def measure_all(built: dict[str, dict[str, Any]], device: torch.device,
                args: argparse.Namespace) -> list[dict[str, Any]]:
    sync = device.type == "cuda"
    some = next(iter(built.values()))["loaded"]
    x, t = warmup_inputs(some.kind, args.tile, 1)
    passes = interleaved({c: (lambda b=b: b["engine"].run(x, t)) for c, b in built.items()},
                         args.repeat, sync)
    tiles = interleaved({c: (lambda b=b: restore_tile(b["engine"], b["loaded"], args.tile,
                                                      args.steps)) for c, b in built.items()},
                        args.repeat, sync)
    reference = TorchEngine(some.model, some.kind, device).run(x, t)
    rows = []
    for case, b in built.items():
        row: dict[str, Any] = {"engine": case, "build_s": b["build_s"],
                               "describe": b["engine"].describe(),
                               "precision": b["engine"].describe().get("precision", "fp32"),
                               "psnr_vs_fp32": psnr_db(reference, b["engine"].run(x, t)),
                               "pass_ms": 1e3 * median(passes[case]),
                               "tile_ms": 1e3 * median(tiles[case]), "tiles_per_s": {}}
        if "eager" in built:
            row["speedup_pass"] = paired_speedup(passes["eager"], passes[case])
            row["speedup_tile"] = paired_speedup(tiles["eager"], tiles[case])
        rows.append(row)
    for batch in args.batches if args.throughput else ():
        xb, tb = warmup_inputs(some.kind, args.tile, batch)
        runs = interleaved({c: (lambda b=b, xb=xb, tb=tb: b["engine"].run(xb, tb))
                            for c, b in built.items()}, args.repeat, sync)
        for row in rows:
            row["tiles_per_s"][batch] = batch / median(runs[row["engine"]])
    return rows


def table(rows: list[dict[str, Any]], batches: list[int], throughput: bool) -> str:
    head = ("| engine | precision | pass (ms) | tile (ms) | speed-up pass / tile | dB vs fp32 | "
            "build+warm (s) |")
    rule = "|---|---|---:|---:|---:|---:|---:|"
    if throughput:
        head += "".join(f" tiles/s b{b} |" for b in batches)
        rule += "---:|" * len(batches)
    lines = [head, rule]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['engine']} | skipped: {r['skipped']} |")
            continue
        speed = (f"{r['speedup_pass']:.2f}× / {r['speedup_tile']:.2f}×"
                 if "speedup_pass" in r else "–")
        line = (f"| {r['engine']} | {r['precision']} | {r['pass_ms']:.1f} | {r['tile_ms']:.1f} | "
                f"{speed} | {r['psnr_vs_fp32']:.1f} | {r['build_s']:.1f} |")
        if throughput:
            line += "".join(f" {r['tiles_per_s'].get(b, float('nan')):.2f} |" for b in batches)
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--engines", nargs="+", choices=sorted(CASES), default=None,
                        help="default: every case for the device")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a real checkpoint (default: a random-weight config, below)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--blocks", type=int, nargs=4, default=[1, 1, 1, 1])
    parser.add_argument("--d-state", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="sampler steps per tile")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--throughput", action=argparse.BooleanOptionalAction, default=None,
                        help="tiles/s at each --batches size (default: on CUDA only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch, numba and onnxruntime threads (default: theirs)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.throughput is None:
        args.throughput = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import numba

            numba.set_num_threads(args.threads)
        except (ImportError, ValueError):
            pass
    cases = args.engines or list(CUDA_ENGINES if device.type == "cuda" else CPU_ENGINES)
    from service.scan import active_backend
    from service.scan import warmup as warm_scan

    warm_scan(device)
    scan = active_backend(device)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or random_checkpoint(Path(tmp), args.dim, args.blocks,
                                                          args.d_state)
        built, skipped = {}, []
        for case in cases:
            print(f"{case} ...", file=sys.stderr, flush=True)
            try:
                built[case] = build(case, checkpoint, device, args, Path(tmp) / "cache")
            except Exception as exc:  # an engine this machine lacks: report, go on
                skipped.append({"engine": case, "skipped": f"{type(exc).__name__}: {exc}"})
                print(json.dumps(skipped[-1], default=str), file=sys.stderr, flush=True)
        rows = measure_all(built, device, args) if built else []
        rows += skipped
    model = str(args.checkpoint) if args.checkpoint else (
        f"random dim {args.dim}, blocks {args.blocks}, d_state {args.d_state}")
    print(f"{model}; tile {args.tile}, {args.steps} steps, device {device}, scan {scan}, "
          f"threads {torch.get_num_threads()}")
    print(table(rows, args.batches, args.throughput))
    if args.json:
        summary = {"model": model, "tile": args.tile, "scan": scan, "rows": rows}
        args.json.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
