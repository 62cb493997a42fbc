"""Where each restored image goes, checked before any work starts.

A run that would overwrite one of its inputs, write two images to one file, or replace an
earlier result is refused up front with every offending path named, rather than discovered
(or silently lost) halfway through a long batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.cli.inputs import InputImage

# --format -> file suffix, and an input suffix -> the output suffix when --format is absent.
FORMAT_SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}
KEPT_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".webp": "webp",
                 ".tif": "tiff", ".tiff": "tiff"}
DEFAULT_FORMAT = "png"  # BMP (read-only) and other inputs
# What POST /restore writes when asked; a TIFF input without --format is answered as TIFF.
SERVER_FORMATS = ("png", "jpeg", "webp")
MAX_LISTED = 5


class DestinationError(ValueError):
    """The outputs of a run conflict with its inputs, each other or existing files."""


@dataclass(frozen=True)
class Job:
    source: InputImage
    dest: Path
    format: str
    """Output format name (png, jpeg, webp, tiff), matching ``dest``'s suffix."""


def _key(path: Path) -> str:
    return os.path.normcase(str(path.resolve()))


def _listed(lines: Sequence[str]) -> str:
    more = len(lines) - MAX_LISTED
    return "\n  " + "\n  ".join(lines[:MAX_LISTED]) + (f"\n  ... and {more} more" if more > 0
                                                        else "")


def output_format(source: Path, requested: str | None) -> str:
    if requested is not None:
        return requested
    return KEPT_SUFFIXES.get(source.suffix.lower(), DEFAULT_FORMAT)


def plan_jobs(images: Sequence[InputImage], output_dir: Path, suffix: str,
              requested_format: str | None, *, overwrite: bool) -> list[Job]:
    """One job per image: ``output_dir / relative-folder / (stem + suffix + extension)``."""
    jobs = []
    for image in images:
        fmt = output_format(image.path, requested_format)
        extension = (image.path.suffix.lower() if requested_format is None
                     and image.path.suffix.lower() in KEPT_SUFFIXES else FORMAT_SUFFIXES[fmt])
        name = f"{image.relative.stem}{suffix}{extension}"
        jobs.append(Job(image, output_dir / image.relative.parent / name, fmt))

    inputs = {_key(job.source.path) for job in jobs}
    onto_inputs = [f"{job.dest}" for job in jobs if _key(job.dest) in inputs]
    if onto_inputs:
        raise DestinationError(
            "refusing to overwrite input images (choose another --output or a --suffix):"
            + _listed(onto_inputs))

    by_dest: dict[str, list[Job]] = {}
    for job in jobs:
        by_dest.setdefault(_key(job.dest), []).append(job)
    clashes = [f"{' and '.join(str(j.source.path) for j in group)} -> {group[0].dest}"
               for group in by_dest.values() if len(group) > 1]
    if clashes:
        raise DestinationError(
            "several inputs would be written to the same file (pass their folders instead, "
            "whose sub-folders are kept, or restore them separately):" + _listed(clashes))

    if not overwrite:
        existing = [str(job.dest) for job in jobs if job.dest.exists()]
        if existing:
            raise DestinationError(
                "output files exist (pass --overwrite to replace them, or choose another "
                "--output or --suffix):" + _listed(existing))
    return jobs
