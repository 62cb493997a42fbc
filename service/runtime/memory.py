"""Host memory: what a request will need at its peak, the process's budget, and giving memory back.

Why estimates from the header: a request's memory is decided by its image's size before any
pixel exists, so the service can refuse (413) or queue a request before decoding it, instead of
finding out from the kernel's OOM killer. Every per-kind fact (output scale, which session, how
its state is stored) is read from the model kind and the tiling policy here, in one place; the
byte counts per pixel follow the phases a request goes through, each with what is alive then:

* decode: Pillow's raw pixels, numpy's copy and the float32 conversion (``DECODE_BPP``);
* compaction: the decoded float32 RGB and the uint8 (or float32) condition made from it;
* the session: its whole-image state (service.tiling.state: condition, x_t and an ε accumulator
  for diffusion; the input and a ×s output accumulator for one-pass kinds), and while it opens,
  the noise drawn at the image's size next to its padded copy;
* output: the restored planes and their HWC copy; encode: that copy, Pillow's image, the
  compressed bytes and the encoder's own working set (service.imaging.encode quantises in strips
  straight into Pillow's image, so no image-sized integer or float temporaries).

Network passes are not per request: the batcher runs one pass at a time per task, so their
working set is a process reserve measured once at start-up (``measure_pass_bytes``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.models.kinds import ModelKind
from service.nn.resample import MULTIPLE
from service.tiling.grid import padded_size, tile_grid

MB = 2**20

DECODE_BPP = 34
"""Bytes per input pixel while decoding: raw and numpy copies (≤ 4 + 4), float32 and its
division (12 + 12), a grayscale image's replication, alpha (1)."""
FLOAT_BPP = 12  # a float32 RGB plane
UINT8_BPP = 3  # an 8-bit RGB plane
ENCODE_EXTRA_BPP: dict[str, int] = {"PNG": 12, "JPEG": 12, "TIFF": 18, "WEBP": 48}
"""Bytes per output pixel over the float HWC input while encoding, per output format: Pillow's
image (≤ 4: RGB is stored as 4 bytes), the compressed bytes (≤ 4 for RGBA noise; the TIFF
writer holds them twice) and a strip (measured at most 9 for PNG, 8 for JPEG, 15 for TIFF).
WebP adds libwebp's working set: its ARGB picture, YUV planes, token buffers and, with alpha,
the lossless alpha coder (measured up to 42)."""
REQUEST_SLACK_BYTES = 32 * MB
"""Per request: tile weights, strips of whole-image arithmetic, a few tiles, Python objects."""
SLACK_FRACTION = 0.10
DEFAULT_BUDGET_FRACTION = 0.75
"""Of the cgroup limit (or RAM): the rest is for the page cache, allocator slack and neighbours."""

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs at its peak and in each phase (for logs, tests and benchmarks)."""

    peak: int
    phases: dict[str, int]
    tiles: int


def estimate_request(
    kind: ModelKind,
    height: int,
    width: int,
    *,
    tile: int | None,
    overlap: int,
    eight_bit: bool = True,
    body_bytes: int = 0,
    output_format: str | None = None,
) -> MemoryEstimate:
    """Peak host bytes of restoring a ``height`` × ``width`` image with a model of ``kind``.

    ``tile`` is the session's tile size (None: a one-pass kind's whole-image pass, see
    ``TilingPolicy.tile_for``); ``eight_bit`` says the decoded pixels are 8-bit (stored as uint8)
    rather than 16-bit or float (stored as float32); ``output_format`` ("PNG", "JPEG", "WEBP",
    "TIFF") is what the result is encoded as; None (not known yet) counts the costliest. The
    result is an upper bound of what the request adds to the process, not counting network
    passes (a process reserve).
    """
    pixels = height * width
    multiple = kind.pad_multiple if not kind.takes_timestep else MULTIPLE
    padded = padded_size(height, multiple) * padded_size(width, multiple)
    s2 = kind.scale * kind.scale
    cond_bpp = UINT8_BPP if eight_bit else FLOAT_BPP
    tiles = 1 if tile is None else len(tile_grid(height, width, tile, overlap, multiple))
    phases = {
        "decode": DECODE_BPP * pixels + body_bytes,
        "compact": FLOAT_BPP * pixels + 2 * cond_bpp * padded,
    }
    if kind.takes_timestep:
        # Opening: condition, noise at the image's size and its padded copy; then condition,
        # x_t and the ε accumulator; the result is made in place over x_t.
        phases["session"] = cond_bpp * padded + FLOAT_BPP * (pixels + padded)
        phases["steps"] = cond_bpp * padded + 2 * FLOAT_BPP * padded
        out_pixels = pixels
        phases["output"] = FLOAT_BPP * padded + FLOAT_BPP * out_pixels
    else:
        # The input (and, tiled, one ×s accumulator; whole, the network's output), normalised
        # and clamped in place.
        out_padded = padded * s2
        phases["steps"] = cond_bpp * padded + FLOAT_BPP * out_padded
        out_pixels = pixels * s2
        phases["output"] = FLOAT_BPP * out_padded + FLOAT_BPP * out_pixels
    encode_bpp = ENCODE_EXTRA_BPP.get((output_format or "").upper(),
                                      max(ENCODE_EXTRA_BPP.values()))
    phases["encode"] = (FLOAT_BPP + encode_bpp) * out_pixels + s2 * pixels  # + alpha
    peak = max(phases.values())
    peak = int(peak * (1 + SLACK_FRACTION)) + REQUEST_SLACK_BYTES
    return MemoryEstimate(peak=peak, phases=phases, tiles=tiles)


# ---------------------------------------------------------------------- the process's budget


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> int | None:
    """The tightest memory limit in bytes on this process's cgroup or its ancestors (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``), None when unlimited."""
    text = proc_cgroup if proc_cgroup is not None else (_read(Path("/proc/self/cgroup")) or "")
    candidates: list[tuple[Path, str]] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            candidates += [(root, rel), (root / "unified", rel)]
        elif "memory" in controllers.split(","):
            candidates.append((root / "memory", rel))
    limits: list[int] = []
    for base, rel in candidates:
        node = base / rel.lstrip("/")
        while True:
            for name in ("memory.max", "memory.limit_in_bytes"):
                value = _read(node / name)
                if value is not None and value.isdigit() and int(value) < _UNLIMITED:
                    limits.append(int(value))
            if node == base or base not in node.parents:
                break
            node = node.parent
    return min(limits) if limits else None


def total_ram() -> int | None:
    text = _read(Path("/proc/meminfo")) or ""
    match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def default_budget_bytes() -> int:
    """``DEFAULT_BUDGET_FRACTION`` of the cgroup limit, else of RAM (4 GiB if neither is
    known)."""
    limits = [x for x in (cgroup_memory_limit(), total_ram()) if x is not None]
    limit = min(limits) if limits else 4 * 2**30
    return int(limit * DEFAULT_BUDGET_FRACTION)


# ---------------------------------------------------------------------- measuring and returning


def current_rss() -> int:
    """Resident bytes now (/proc/self/statm; 0 where there is no /proc)."""
    text = _read(Path("/proc/self/statm"))
    if not text:
        return 0
    import resource

    return int(text.split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    """The high-water mark of resident bytes (VmHWM) since start or ``reset_peak_rss``."""
    text = _read(Path("/proc/self/status")) or ""
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else current_rss()


def reset_peak_rss() -> bool:
    """Lower VmHWM to the current RSS (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_memory() -> bool:
    """Give freed heap pages back to the system (glibc ``malloc_trim``); blocking, so call it
    off the event loop. Why: a request's tile-sized buffers are carved from the heap, and glibc
    keeps the freed pages resident, so without it each large request leaves the RSS higher."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def measure_pass_bytes(run: Callable[[], object]) -> int:
    """Bytes a blocking call (a network pass) adds to the RSS at its peak, at least 0.

    Needs the high-water mark reset (Linux); elsewhere returns 0 and the caller falls back.
    Freed heap is returned first: a pass that reuses resident free pages would otherwise look
    smaller than it is, by however much the process happened to hold.
    """
    release_memory()
    if not reset_peak_rss():
        return 0
    before = current_rss()
    run()
    return max(0, peak_rss() - before)


def pass_pixels(kind: ModelKind, batch: int, tile: int, whole_max_pixels: int) -> int:
    """Input pixels of the largest pass a task's batcher may run (a batch of tiles, or a batch
    of whole images for a one-pass kind)."""
    largest = tile * tile if kind.takes_timestep else max(tile * tile, whole_max_pixels)
    return batch * largest


def scale_pass_bytes(measured: int, measured_pixels: int, pixels: int) -> int:
    """Extrapolate a measured pass's bytes to a pass of ``pixels`` (activations are linear in
    pixels × batch), with the pass's own float32 inputs and outputs as a floor."""
    per_pixel = measured / max(1, measured_pixels)
    return max(math.ceil(per_pixel * pixels), 2 * FLOAT_BPP * 2 * pixels)
