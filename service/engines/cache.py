"""Where exported engines live between start-ups, and when a cached file may be reused.

Layout: ``<checkpoint dir>/.engines/<stem>-t<tile>-b<max batch>[-<precision>].<suffix>``, e.g.
``models/.engines/denoise-t256-b8.onnx``. The *name* holds what selects a file (checkpoint
name, tile, batch, precision); the file's *metadata* holds what validates it (checkpoint
sha256, tile, batch, ENGINE_VERSION, and for TensorRT the library version and GPU). So a
replaced checkpoint or a new engine version overwrites its one stale file instead of piling up
new ones, and `diffmamba export` with no ``--output`` writes exactly where the service looks.

When the models directory is read-only (a container image, a ConfigMap) the cache goes to
``DIFFMAMBA_ENGINE_CACHE_DIR`` if set, else ``~/.cache/diffmamba/engines``; files already next to
the checkpoint (built into the image) are still used when valid. With nowhere writable the
engine is built into a temporary directory for this process only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.engines.base import ENGINE_VERSION

logger = logging.getLogger("service.engines")

CACHE_SUBDIR = ".engines"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffmamba" / "engines"


def cache_name(checkpoint: Path, tile: int, max_batch: int, suffix: str,
               precision: str = "fp32") -> str:
    tag = "" if precision == "fp32" else f"-{precision}"
    return f"{checkpoint.stem}-t{tile}-b{max_batch}{tag}{suffix}"


def default_path(checkpoint: Path, tile: int, max_batch: int, suffix: str,
                 precision: str = "fp32") -> Path:
    """Where the service looks first (and where `diffmamba export` writes by default)."""
    return checkpoint.parent / CACHE_SUBDIR / cache_name(checkpoint, tile, max_batch, suffix,
                                                         precision)


def writable(directory: Path) -> bool:
    """Create ``directory`` if needed and prove a file can be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError:
        return False
    return True


def expected_metadata(sha256: str | None, tile: int, max_batch: int,
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
    meta = {"checkpoint_sha256": sha256 or "", "tile": str(tile), "max_batch": str(max_batch),
            "engine_version": ENGINE_VERSION}
    meta.update(extra or {})
    return meta


def mismatches(found: Mapping[str, str], expected: Mapping[str, str]) -> list[str]:
    """The keys whose cached values differ, as 'key: cached != wanted' strings."""
    return [f"{k}: {found.get(k, '<missing>')!r} != {v!r}" for k, v in expected.items()
            if found.get(k) != v]


@dataclass
class EngineCache:
    """Find a valid cached file for one engine, or build it where it can be written."""

    checkpoint: Path
    tile: int
    max_batch: int
    suffix: str
    precision: str = "fp32"
    configured_dir: Path | None = None

    def candidates(self) -> list[Path]:
        name = cache_name(self.checkpoint, self.tile, self.max_batch, self.suffix,
                          self.precision)
        dirs = [self.configured_dir] if self.configured_dir is not None else []
        dirs += [self.checkpoint.parent / CACHE_SUBDIR, user_cache_dir()]
        unique: list[Path] = []
        for d in dirs:
            if d is not None and d / name not in unique:
                unique.append(d / name)
        return unique

    def get_or_build(
        self,
        read_metadata: Callable[[Path], Mapping[str, str]],
        expected: Mapping[str, str],
        build: Callable[[Path], Path],
        label: str,
    ) -> Path:
        """The first candidate whose metadata matches ``expected``; else ``build`` into the
        first writable candidate. Stale files are logged and rebuilt; unreadable ones are
        logged as errors and rebuilt."""
        for path in self.candidates():
            if not path.is_file():
                continue
            try:
                found = read_metadata(path)
            except Exception as exc:
                logger.error("%s: cached engine %s is corrupt or unreadable (%s: %s); "
                             "rebuilding it", label, path, type(exc).__name__, exc)
                continue
            diff = mismatches(found, expected)
            if not diff:
                logger.info("%s: using cached engine %s", label, path)
                return path
            logger.warning("%s: cached engine %s is stale (%s); rebuilding it", label, path,
                           "; ".join(diff))
        return self.build(build, label)

    def build(self, build: Callable[[Path], Path], label: str) -> Path:
        """``build`` into the first writable candidate (a temporary directory if none is)."""
        for path in self.candidates():
            if writable(path.parent):
                logger.info("%s: building engine %s", label, path)
                return build(path)
            logger.warning("%s: %s is not writable; trying the next engine cache directory",
                           label, path.parent)
        scratch = Path(tempfile.mkdtemp(prefix="diffmamba-engine-"))
        logger.warning("%s: no writable engine cache directory; building into %s for this "
                       "process only (set DIFFMAMBA_ENGINE_CACHE_DIR)", label, scratch)
        return build(scratch / self.candidates()[0].name)
