"""What ``diffmamba restore`` reads: files, folders (recursively) and glob patterns.

Globs are expanded here too, because not every shell expands them (Windows' cmd, a quoted
pattern, a pattern with no match left as-is by bash). A folder or a glob keeps each image's
path below its base folder, so the output folder can mirror the input tree and same-named
images in different sub-folders stay apart.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# The suffixes of the formats service.imaging decodes (PNG, JPEG, WebP, TIFF, BMP); listed
# here so that finding inputs does not import the imaging layer (and torch) — a test keeps the
# two in step.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".webp", ".tif", ".tiff", ".bmp"})
GLOB_CHARS = frozenset("*?[")


class InputError(ValueError):
    """An argument that names nothing to restore."""


@dataclass(frozen=True)
class InputImage:
    path: Path
    """The file to read."""
    relative: Path
    """Its place below the output folder: the file name, or its path below a folder or the
    fixed part of a glob."""


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _has_glob(text: str) -> bool:
    return any(ch in GLOB_CHARS for ch in text)


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


def _walk(folder: Path, skip: Path | None) -> Iterator[Path]:
    """Image files below ``folder``, sorted, skipping hidden entries and the ``skip`` tree
    (the output folder, so a second run does not restore the first run's outputs)."""
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (skip is None or (here / d).resolve() != skip))
        for name in sorted(files):
            if not name.startswith(".") and is_image_name(Path(name)):
                yield here / name


def _glob_base(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard: ``a/b/**/*.png`` -> ``a/b``."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _has_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _expand_one(arg: str, skip: Path | None) -> list[InputImage]:
    path = Path(arg)
    if path.is_dir():
        images = [InputImage(p, p.relative_to(path)) for p in _walk(path, skip)]
        if not images:
            raise InputError(f"no image files in folder {arg} (looked for "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        return images
    if path.exists():
        return [InputImage(path, Path(path.name))]
    if not _has_glob(arg):
        raise InputError(f"no such file or folder: {arg}")
    base = _glob_base(arg)
    images = []
    for match in sorted(glob.glob(arg, recursive=True)):
        found = Path(match)
        if skip is not None and (found.resolve() == skip or _inside(found.resolve(), skip)):
            continue
        if found.is_dir():
            images += [InputImage(p, p.relative_to(base)) for p in _walk(found, skip)]
        elif is_image_name(found):
            images.append(InputImage(found, found.relative_to(base)))
    if not images:
        raise InputError(f"no image files match {arg}")
    return images


def expand_inputs(args: Sequence[str], output_dir: Path | None = None) -> list[InputImage]:
    """Every image the arguments name, in order, each file once.

    ``output_dir``, when it lies inside a folder argument, is not searched.
    """
    skip = output_dir.resolve() if output_dir is not None else None
    seen: set[Path] = set()
    images: list[InputImage] = []
    for arg in args:
        for image in _expand_one(arg, skip):
            key = image.path.resolve()
            if key not in seen:
                seen.add(key)
                images.append(image)
    return images
