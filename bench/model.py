"""Denoiser pass cost: ms per pass and peak memory at 128², 256², 512² for a small and the
published Diff-Mamba config.

Each (config, size) runs in a fresh subprocess so the process's peak RSS belongs to that case
alone; on CUDA the peak is torch.cuda.max_memory_allocated.

    python bench/model.py                    # small + published, 128/256/512, CPU
    python bench/model.py --configs small --sizes 128 256 --repeat 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS: dict[str, dict[str, Any]] = {
    "small": {"dim": 16, "num_blocks": [1, 1, 1, 1], "d_state": 8},
    "published": {"dim": 48, "num_blocks": [4, 6, 6, 8], "d_state": 32},
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(config_name: str, size: int, repeat: int, device: str) -> dict[str, Any]:
    import torch

    from service.nn import DiffMamba, DiffMambaConfig
    from service.nn.resample import use_channels_last
    from service.scan import active_backend, warmup

    torch.manual_seed(0)
    model = DiffMamba(DiffMambaConfig.from_dict(CONFIGS[config_name])).eval().to(device)
    use_channels_last(model, device == "cpu")  # the layout the service loads models in
    warmup()
    params = sum(p.numel() for p in model.parameters())
    inp = torch.rand(1, 6, size, size, device=device)
    t = torch.tensor([500.0], device=device)
    with torch.inference_mode():
        model(inp[..., :16, :16], t)  # compile kernels before the baseline
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base_rss = _peak_rss_mb()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            model(inp, t)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mb()
    )
    return {
        "config": config_name,
        "params_M": params / 1e6,
        "size": size,
        "device": device,
        "scan_backend": active_backend(torch.device(device)),
        "ms_min": min(times) * 1e3,
        "ms_median": sorted(times)[len(times) // 2] * 1e3,
        "peak_mb": peak,
        "peak_over_model_mb": peak - base_rss if device != "cuda" else peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.repeat, args.device)
        print(json.dumps(result))
        return

    rows = []
    for name in args.configs:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--one", name, str(size),
                   "--repeat", str(args.repeat), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{name} {size}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{name} {size}² done: {r['ms_median']:.0f} ms", file=sys.stderr)

    print("| config | params | size | device | scan | ms / pass (median) | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['params_M']:.2f} M | {r['size']}² | {r['device']} |"
            f" {r['scan_backend']} | {r['ms_median']:.1f} | {r['peak_mb']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
