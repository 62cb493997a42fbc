"""``diffmamba data``: prepare training data offline.

* ``data build --output DIR``: the clean-image pool from photographs shipped by Debian
  packages (``apt-get download`` + ``dpkg-deb -x``, or the installed files) and a few pinned
  PyPI wheels (``pip download``); see ``service.data.pool``.
* ``data degrade IMAGE... --task T --output DIR``: write synthetic degraded versions of
  images, to look at what the networks are trained on.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from service.cli.common import fail


def _fraction(value: str) -> float:
    f = float(value)
    if not 0.0 <= f < 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return f


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return n


def add_parser(sub: argparse._SubParsersAction) -> None:
    from service.data.degrade import TASKS
    from service.data.pool import DEFAULT_PACKAGES, DEFAULT_SHORT_SIDE

    p = sub.add_parser("data", help="prepare training data (clean pool, degraded previews)")
    p.set_defaults(run=run)
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    b = dsub.add_parser(
        "build", help="build the clean-image pool from photos shipped by packages",
        description="Fetch the packages (installed files, else apt-get download; run "
                    "`apt-get update` first; pypi:NAME==VERSION sources with pip download), "
                    "keep the allow-listed photographs, downsize them and write DIR/train, "
                    "DIR/val and DIR/manifest.json.")
    b.add_argument("--output", required=True, help="pool directory")
    b.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), metavar="PKG",
                   help="Debian packages or pypi:NAME==VERSION wheels that have an "
                        f"allow-list (default: all {len(DEFAULT_PACKAGES)}: "
                        f"{' '.join(DEFAULT_PACKAGES)})")
    b.add_argument("--patch", type=int, default=0,
                   help="cut images into PATCHxPATCH tiles (0: whole images, the default)")
    b.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE,
                   help="downsize so the short side is at most this (px)")
    b.add_argument("--max-images", type=_positive, default=None, help="keep at most N photos")
    b.add_argument("--holdout-fraction", type=_fraction, default=0.1,
                   help="fraction of photos held out in DIR/val")
    b.add_argument("--seed", type=int, default=0, help="seed of the split")
    b.add_argument("--workdir", default=None, help="where to download/unpack (default: temp)")
    b.add_argument("--force", action="store_true", help="replace an existing pool in DIR")

    d = dsub.add_parser("degrade", help="write synthetically degraded copies of images")
    d.add_argument("images", nargs="+", metavar="IMAGE")
    d.add_argument("--task", required=True, choices=TASKS)
    d.add_argument("--output", default="degraded", help="output directory")
    d.add_argument("--seed", type=int, default=0, help="degradation seed")
    d.add_argument("--evaluation", action="store_true",
                   help="fixed evaluation parameters (denoise: sigma 25)")
    d.add_argument("--degradation", metavar="VARIANT",
                   help="a named training variant of the task's generator (deblur: mild)")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "build":
        return _build(args)
    return _degrade(args)


def _build(args: argparse.Namespace) -> int:
    from service.data.pool import PoolError, build_pool

    logging.getLogger("service.data").setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory(prefix="diffmamba-pool-") as tmp:
            manifest = build_pool(
                args.output, args.packages, short_side=args.short_side, patch=args.patch,
                max_images=args.max_images, holdout_fraction=args.holdout_fraction,
                seed=args.seed, workdir=Path(args.workdir or tmp), force=args.force)
    except (PoolError, ValueError, OSError) as exc:
        return fail(str(exc))
    for pkg in manifest["packages"]:
        print(f"{pkg['name']} {pkg['version']} ({pkg['origin']})")
    for split in ("train", "val"):
        t = manifest["totals"][split]
        print(f"{split}: {t['images']} images, {t['files']} files, {t['pixels'] / 1e6:.1f} Mpx")
    for m in manifest["missing"]:
        print(f"missing: {m}")
    print(f"wrote {Path(args.output) / 'manifest.json'}")
    return 0


def _degrade(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from service.data.datasets import load_rgb
    from service.data.degrade import check_variant, degrade

    try:
        check_variant(args.task, args.degradation, args.evaluation)
    except ValueError as exc:
        return fail(str(exc))
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for i, name in enumerate(args.images):
        src = Path(name)
        try:
            clean = load_rgb(src).astype(np.float32) / np.float32(255.0)
        except OSError as exc:
            print(f"diffmamba: skipping {src}: {exc}")
            failures += 1
            continue
        rng = np.random.default_rng([args.seed, i])
        out = degrade(args.task, clean, rng, evaluation=args.evaluation,
                      variant=args.degradation)
        dest = out_dir / f"{src.stem}_{args.task}.png"
        Image.fromarray((out * 255.0).round().astype(np.uint8)).save(dest)
        print(f"{src} -> {dest}")
    return 1 if failures else 0
