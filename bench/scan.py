"""Selective-scan backends: ms per call, speed-up and exp-updates/s against the machine's exp limit.

Forward: every available backend against the step-by-step reference. Forward+backward: autograd
through the chunked torch form against the compiled numba pair (and mamba-ssm on CUDA). The exp
limit is measured here too: torch.exp on a large array, and the kernels' own SIMD exp on a
cache-resident one (the scan's decays never leave registers, so the latter is its ceiling).

    python bench/scan.py                                   # (1, 384, 4096), N = 32, G = 4
    python bench/scan.py --length 16384 --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.scan import available_backends, selective_scan_chunked
from service.scan.reference import selective_scan_reference


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], Any], repeat: int, device: str = "cpu") -> dict[str, Any]:
    """One untimed warm-up call, then `repeat` timed calls (seconds)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs_s": times}


def _inputs(args: argparse.Namespace, device: str) -> dict[str, torch.Tensor]:
    """Trained-network magnitudes: pre-softplus Δ in (−4, 1), A = −exp(U(0, 3))."""
    g = torch.Generator().manual_seed(0)
    b, d, n, length, groups = args.batch, args.channels, args.state, args.length, args.groups
    tensors = {
        "u": torch.randn(b, d, length, generator=g),
        "delta": torch.rand(b, d, length, generator=g) * 5 - 4,
        "A": -torch.exp(torch.rand(d, n, generator=g) * 3),
        "B": torch.randn(b, groups, n, length, generator=g),
        "C": torch.randn(b, groups, n, length, generator=g),
        "D": torch.randn(d, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.5,
    }
    return {k: v.to(device) for k, v in tensors.items()}


def _forward_and_backward(fn: Callable[..., torch.Tensor], inputs: dict) -> Callable[[], None]:
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    grad = torch.randn_like(inputs["u"])

    def run() -> None:
        for t in leaves.values():
            t.grad = None
        fn(**leaves).backward(grad)

    return run


def exp_limits(repeat: int) -> dict[str, float]:
    """exp/s of torch.exp (large array, all torch threads) and of the kernels' SIMD exp."""
    limits = {}
    big = torch.rand(1 << 24) * -30
    out = torch.empty_like(big)
    t = _time(lambda: torch.exp(big, out=out), repeat)
    limits["torch_exp_large"] = big.numel() / t["min_s"]
    if "cpu" in available_backends():
        from service.scan import cpu_kernel

        for name, rows in (("simd_exp_cached", 64), ("simd_exp_large", 4096)):
            x = (torch.rand(rows, 4096) * -30).numpy()
            y = x.copy()
            t = _time(lambda x=x, y=y: cpu_kernel.exp_rows(x, y), max(repeat, 5) * 4)
            limits[name] = x.size / t["min_s"]
    return limits


def run(args: argparse.Namespace) -> dict[str, Any]:
    backends = available_backends()
    updates = args.batch * args.channels * args.length * args.state
    results: list[dict[str, Any]] = []

    def record(name: str, kind: str, timing: dict[str, Any], device: str) -> None:
        results.append({"backend": name, "pass": kind, "device": device, **timing})

    cpu_inputs = _inputs(args, "cpu")
    if "cpu" in backends:
        from service.scan.cpu import selective_scan_cpu
        from service.scan.cpu import warmup as warmup_cpu

        warmup_cpu()

    with torch.no_grad():
        ref = _time(lambda: selective_scan_reference(**cpu_inputs), args.ref_repeat)
        record("reference", "forward", ref, "cpu")
        chunked = _time(lambda: selective_scan_chunked(**cpu_inputs), args.repeat)
        record("chunked", "forward", chunked, "cpu")
        if "cpu" in backends:
            record(
                "cpu",
                "forward",
                _time(lambda: selective_scan_cpu(**cpu_inputs), args.repeat),
                "cpu",
            )
    chunked_bwd = _time(_forward_and_backward(selective_scan_chunked, cpu_inputs), args.repeat)
    record("chunked", "forward+backward", chunked_bwd, "cpu")
    if "cpu" in backends:
        cpu_bwd = _time(_forward_and_backward(selective_scan_cpu, cpu_inputs), args.repeat)
        record("cpu", "forward+backward", cpu_bwd, "cpu")
    if args.reference_backward:
        ref_bwd = _time(_forward_and_backward(selective_scan_reference, cpu_inputs), 1)
        record("reference", "forward+backward", ref_bwd, "cpu")

    if torch.cuda.is_available():
        gpu_inputs = _inputs(args, "cuda")
        with torch.no_grad():
            expected = selective_scan_reference(**cpu_inputs)
        fns: dict[str, Callable[..., torch.Tensor]] = {"chunked": selective_scan_chunked}
        if "cuda" in backends:
            from service.scan.cuda import selective_scan_cuda

            fns["cuda"] = selective_scan_cuda
        if "triton" in backends:
            from service.scan.triton_kernel import selective_scan_triton

            fns["triton"] = selective_scan_triton
        for name, fn in fns.items():
            with torch.no_grad():
                t = _time(lambda fn=fn: fn(**gpu_inputs), args.repeat, "cuda")
                t["max_err"] = float((fn(**gpu_inputs).cpu() - expected).abs().max())
            record(name, "forward", t, "cuda")
            t = _time(_forward_and_backward(fn, gpu_inputs), args.repeat, "cuda")
            record(name, "forward+backward", t, "cuda")

    baselines = {"forward": ref["median_s"], "forward+backward": chunked_bwd["median_s"]}
    for row in results:
        row["ms"] = row["median_s"] * 1e3
        base = baselines[row["pass"]]
        row["speedup"] = base / row["median_s"]
        row["updates_per_s"] = updates / row["median_s"]

    return {
        "shape": {
            "batch": args.batch,
            "channels": args.channels,
            "length": args.length,
            "state": args.state,
            "groups": args.groups,
        },
        "updates": updates,
        "machine": _machine(),
        "exp_limits_per_s": exp_limits(args.repeat),
        "results": results,
    }


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if "cpu" in available_backends():
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
        info["numba_threading_layer"] = numba.threading_layer()
    return info


def markdown(report: dict[str, Any]) -> str:
    s, m, lim = report["shape"], report["machine"], report["exp_limits_per_s"]
    limit = lim.get("simd_exp_cached", lim["torch_exp_large"])
    lines = [
        f"selective scan, u/delta ({s['batch']}, {s['channels']}, {s['length']}), "
        f"N = {s['state']}, G = {s['groups']}; {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']} ({m['torch_threads']} threads)"
        + (
            f", numba {m['numba']} ({m['numba_threads']} threads, {m['numba_threading_layer']})"
            if "numba" in m
            else ""
        )
        + (f", GPU {m['cuda']}" if m["cuda"] else ""),
        "",
        "exp limit: "
        + ", ".join(f"{k} {v / 1e9:.2f}·10⁹/s" for k, v in lim.items())
        + "  (exp-update % below is against the first SIMD figure, else torch.exp)",
        "",
        "| backend | device | pass | ms (median) | ms (min) | speed-up | exp-updates/s | "
        "% of exp limit |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        against = "× ref" if r["pass"] == "forward" else "× chunked-autograd"
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['pass']} | {r['ms']:.1f} | "
            f"{r['min_s'] * 1e3:.1f} | {r['speedup']:.1f} {against} | "
            f"{r['updates_per_s'] / 1e9:.2f}·10⁹ | {100 * r['updates_per_s'] / limit:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--state", type=int, default=32)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per fast backend")
    parser.add_argument("--ref-repeat", type=int, default=2, help="timed reference calls")
    parser.add_argument(
        "--reference-backward", action="store_true", help="also time autograd through the reference"
    )
    parser.add_argument("--json", type=Path, help="write the full results here")
    args = parser.parse_args(argv)
    if args.channels % args.groups:
        parser.error("--groups must divide --channels")
    report = run(args)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
