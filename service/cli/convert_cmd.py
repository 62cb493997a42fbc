"""``diffmamba convert IN.pth OUT.safetensors``: the authors' BasicSR file to our format.

The safetensors file carries the detected config in its metadata, loads without unpickling and
memory-maps, which is what the service prefers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a BasicSR .pth checkpoint to .safetensors")
    p.add_argument("source", help="input checkpoint (.pth or .safetensors)")
    p.add_argument("output", help="output .safetensors path")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.models import CheckpointError, load_checkpoint, write_safetensors

    out = Path(args.output)
    if out.suffix != ".safetensors":
        return fail(f"output must end in .safetensors, got {out.name}")
    try:
        loaded = load_checkpoint(args.source)
    except CheckpointError as exc:
        return fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(out, loaded.model.state_dict(), loaded.arch, loaded.config.to_dict())
    print(f"wrote {out} ({loaded.arch}, {loaded.num_params:,} parameters)")
    return 0
