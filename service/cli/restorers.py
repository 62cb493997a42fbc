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
    stop_errors: tuple[type[Exception], ...]
    """What ends the run early (reported, the images done so far kept)."""

    def restore(self, path: Path, fmt: str, on_pass: OnPass) -> Restored: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LocalOptions:
    device: str
    precision: str
    tile: int
    overlap: int
    whole_max_pixels: int
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
        self.stop_errors = ()
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

    def close(self) -> None:
        pass


def image_size(data: bytes | Path) -> tuple[int, int]:
    """Width and height from an image header (Pillow reads no pixels for this)."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        return img.size


class RemoteRestorer:
    """A running service does the work (``service.client.Client``); files stay here."""

    passes = None

    def __init__(self, url: str, task: str, *, api_key: str | None, steps: int | None,
                 seed: int, tile: int | None) -> None:
        from service.client import Client, InvalidRequest, ServerError, ServiceError, Timeout

        self.client = Client(url, api_key=api_key)
        self.task, self.steps, self.seed, self.tile = task, steps, seed, tile
        # Asked once, before the first image: an unreachable service, a refused key or a task
        # it does not serve is one clear error rather than one per image.
        served = {entry["task"]: entry for entry in self.client.tasks()}
        if task not in served:
            self.client.close()
            raise LookupError(f"the service at {url} does not serve task {task!r} (served: "
                              f"{', '.join(sorted(served)) or 'none'})")
        self.uses_seed = not served[task].get("steps_ignored", False)
        # Per image: a bad image or parameter, a failed or too slow pass. Anything else (key
        # refused, service gone) stops the run.
        self.errors = (InvalidRequest, ServerError, Timeout, OSError)
        self.stop_errors = (ServiceError,)

    def restore(self, path: Path, fmt: str, on_pass: OnPass) -> Restored:
        from service.cli.destinations import SERVER_FORMATS

        data = self.client.restore(path, task=self.task, steps=self.steps, seed=self.seed,
                                   format=fmt if fmt in SERVER_FORMATS else None,
                                   tile=self.tile)
        return Restored(data, image_size(path), image_size(data))

    def close(self) -> None:
        self.client.close()
