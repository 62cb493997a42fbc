"""``diffmamba inspect CHECKPOINT``: what the loader detects, before you serve it."""

from __future__ import annotations

import argparse
import json

from service.cli.common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a checkpoint's detected architecture and config")
    p.add_argument("checkpoint", help=".pth (BasicSR) or .safetensors file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from service.models import CheckpointError, load_checkpoint

    try:
        loaded = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        return fail(str(exc))
    info = {
        "checkpoint": loaded.source,
        "arch": loaded.arch,
        "kind": loaded.kind,
        "config": loaded.config.to_dict(),
        "parameters": loaded.num_params,
        "sha256": loaded.sha256,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>11}: {value}")
    return 0
