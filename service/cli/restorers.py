"""The two ways ``diffmamba restore`` turns a file into restored image bytes.

``LocalRestorer`` runs the model in this process through the shared restoration path (the
service's sessions: decode -> session -> passes -> encode); ``RemoteRestorer`` posts the file to
a running service with the Python client. Both return encoded bytes, so writing, naming and
reporting are the same whichever did the work.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

OnPass = Callable[..., None]


@dataclass(frozen=True)
class Restored:
    data: bytes
    input_size: tuple[int, int]
    output_size: tuple[int, int]


class Restorer(Protocol):
    passes: int | None
    """Network passes per image (None when another process runs them)."""
    uses_seed: bool
    errors: tuple[type[Exception], ...]
    """What a bad image raises: reported, the image skipped, the run goes on."""

    def restore(self, path: Path, fmt: str, on_pass: OnPass) -> Restored: ...


@dataclass(frozen=True)
class LocalOptions:
    device: str = "auto"
    precision: str = "auto"
    tile: int = 256
    overlap: int = 32
    whole_max_pixels: int = 512 * 512
    max_batch: int = 1


class LocalRestorer:
    """A checkpoint loaded here; every image goes through ``open_session``/``run_session``."""

    def __init__(self, checkpoint: Path, options: LocalOptions, *, steps: int, seed: int) -> None:
        from service.diffusion import DDIMSchedule
        from service.engines.factory import checked_torch_engine
        from service.imaging import ImageError
        from service.models import load_checkpoint
        from service.restoration import TilingPolicy
        from service.runtime.device import resolve_device

        self.policy = TilingPolicy(tile=options.tile, overlap=options.overlap,
                                   whole_max_pixels=options.whole_max_pixels)
        device = resolve_device(options.device)
        loaded = load_checkpoint(checkpoint, device=device)
        self.kind = loaded.kind
        # The service's precision decision (hardware, then 45 dB on a tile).
        self.engine = checked_torch_engine(loaded, device, options.precision,
                                           min(options.tile, 64), checkpoint.name)
        self.max_batch = options.max_batch
        self.errors = (ImageError, OSError)
        self.steps, self.seed = steps, seed
        self.uses_seed = self.kind.takes_timestep
        self.passes = (len(DDIMSchedule().timestep_pairs(steps)) if self.kind.takes_timestep
                       else 1)

    def restore(self, path: Path, fmt: str, on_pass: OnPass) -> Restored:
        from service.imaging import encode_image, from_tensor, read_image, scaled_like, to_tensor
        from service.restoration import open_session, run_session

        image = read_image(path, output_scale=self.kind.scale)
        session = open_session(self.kind, to_tensor(image), self.policy, steps=self.steps,
                               seed=self.seed)
        out = run_session(session, self.engine.run, self.max_batch, on_round=on_pass)
        data, _ = encode_image(from_tensor(out), scaled_like(image, self.kind.scale), fmt)
        return Restored(data, (image.width, image.height), (out.shape[-1], out.shape[-2]))


def image_size(data: bytes | Path) -> tuple[int, int]:
    """Width and height from an image header (Pillow reads no pixels for this)."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        return img.size
