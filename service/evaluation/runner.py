"""Score the degraded input, a classical baseline and a model on the same pairs.

``evaluate`` takes any ``restore_fn(degraded) -> restored`` on float32 (H, W, 3) in [0, 1], so
tests (and other models) plug in without a checkpoint; ``ModelRestorer`` adapts a Diff-Mamba
noise estimator: the whole-image sampler (``restore``) when the image fits in one tile, the
tiled driver (``restore_tiled``) above, both with a fixed sampler seed so a run is repeatable.
Only the model is timed (wall clock per image, including the host/device copies a caller
would pay); a warm-up pass first keeps numba/CUDA start-up costs out of the first image's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.evaluation.baselines import Baseline, baseline_for
from service.evaluation.metrics import Metrics, compare
from service.evaluation.pairs import Pair

Restorer = Callable[[np.ndarray], np.ndarray]
ROWS = ("input", "baseline", "model")
WARMUP_SIDE = 16


@dataclass(frozen=True)
class ImageResult:
    """Per-image scores; ``baseline``/``model`` are None when that row was not run."""

    name: str
    height: int
    width: int
    input: Metrics
    baseline: Metrics | None = None
    model: Metrics | None = None
    model_seconds: float | None = None

    def row(self, kind: str) -> Metrics | None:
        return getattr(self, kind)


@dataclass
class EvalResult:
    """All images, their means, and what produced them (``info`` goes into the JSON)."""

    task: str
    images: list[ImageResult]
    baseline_name: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> tuple[str, ...]:
        """The rows present, in the order input, baseline, model."""
        return tuple(k for k in ROWS if self.images and self.images[0].row(k) is not None)

    def mean(self, kind: str) -> Metrics | None:
        values = [m for r in self.images if (m := r.row(kind)) is not None]
        return Metrics.mean(values) if values else None

    def mean_seconds(self) -> float | None:
        times = [r.model_seconds for r in self.images if r.model_seconds is not None]
        return float(np.mean(times)) if times else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``images`` (per image), ``mean`` (per row) and the run's ``info``."""

        def rows(get: Callable[[str], Metrics | None]) -> dict[str, dict[str, float]]:
            return {k: m.to_dict() for k in self.rows() if (m := get(k)) is not None}

        return {
            "task": self.task,
            "baseline": self.baseline_name,
            **self.info,
            "images": [
                {"name": r.name, "height": r.height, "width": r.width,
                 **rows(r.row), "model_seconds": r.model_seconds}
                for r in self.images
            ],
            "mean": {**rows(self.mean), "model_seconds": self.mean_seconds()},
        }


def evaluate(
    task: str,
    restore_fn: Restorer | None,
    pairs: Sequence[Pair],
    *,
    baseline: Baseline | bool = True,
    crop_border: int = 0,
    on_image: Callable[[ImageResult], None] | None = None,
) -> EvalResult:
    """Metrics of input, baseline (``True``: the task's default) and model for every pair.

    ``restore_fn=None`` gives the input and baseline rows alone. ``on_image`` is called as each
    image finishes (progress output).
    """
    if not pairs:
        raise ValueError("no evaluation pairs")
    chosen = baseline_for(task) if baseline is True else (baseline or None)
    results = []
    for pair in pairs:
        base = model = seconds = None
        if chosen is not None:
            base = compare(chosen.restore(pair.degraded), pair.clean, crop_border)
        if restore_fn is not None:
            start = time.perf_counter()
            out = restore_fn(pair.degraded)
            seconds = time.perf_counter() - start
            if np.shape(out) != pair.clean.shape:
                raise ValueError(f"{pair.name}: restored {np.shape(out)} != {pair.clean.shape}")
            model = compare(out, pair.clean, crop_border)
        h, w = pair.clean.shape[:2]
        inp = compare(pair.degraded, pair.clean, crop_border)
        result = ImageResult(pair.name, h, w, inp, base, model, seconds)
        results.append(result)
        if on_image is not None:
            on_image(result)
    return EvalResult(task, results, chosen.name if chosen is not None else None)


class ModelRestorer:
    """Diff-Mamba noise estimator -> ``Restorer`` (one tile: ``restore``; larger: tiled).

    ``sampler_seed`` fixes x_T, so repeated runs give identical outputs and metrics.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        steps: int,
        sampler_seed: int = 0,
        tile: int = 256,
        overlap: int = 32,
        device: torch.device | str = "cpu",
    ) -> None:
        from service.tiling.grid import validate_tiling

        validate_tiling(tile, overlap)
        self.model = model
        self.steps = int(steps)
        self.sampler_seed = int(sampler_seed)
        self.tile = int(tile)
        self.overlap = int(overlap)
        self.device = torch.device(device)

    def __call__(self, degraded: np.ndarray) -> np.ndarray:
        from service.diffusion import restore
        from service.imaging import from_tensor
        from service.tiling import restore_tiled

        chw = np.ascontiguousarray(np.asarray(degraded, dtype=np.float32).transpose(2, 0, 1))
        cond = torch.from_numpy(chw).unsqueeze(0)
        h, w = cond.shape[-2:]
        with torch.inference_mode():
            if h <= self.tile and w <= self.tile:
                out = restore(self.model, cond.to(self.device), steps=self.steps,
                              seed=self.sampler_seed)
            else:
                out = restore_tiled(self.model, cond, steps=self.steps, seed=self.sampler_seed,
                                    tile=self.tile, overlap=self.overlap, device=self.device)
        return from_tensor(out.cpu())

    def warmup(self) -> None:
        """One untimed 1-step pass on a tiny image (JIT compilation, CUDA context, caches)."""
        from service.diffusion import restore

        cond = torch.full((1, 3, WARMUP_SIDE, WARMUP_SIDE), 0.5, device=self.device)
        with torch.inference_mode():
            restore(self.model, cond, steps=1, seed=0)


class SinglePassRestorer:
    """Single-pass network (VmambaIR) -> ``Restorer``: whole images up to ``whole_max_pixels``
    (the service's default budget), blended tiles above it."""

    def __init__(
        self,
        model: torch.nn.Module,
        tile: int = 256,
        overlap: int = 32,
        device: torch.device | str = "cpu",
        whole_max_pixels: int = 512 * 512,
    ) -> None:
        from service.tiling.grid import validate_tiling

        validate_tiling(tile, overlap)
        self.model, self.tile, self.overlap = model, int(tile), int(overlap)
        self.device = torch.device(device)
        self.whole_max_pixels = int(whole_max_pixels)

    def __call__(self, degraded: np.ndarray) -> np.ndarray:
        from service.imaging import from_tensor
        from service.tiling import fits_whole, run_single_pass

        chw = np.ascontiguousarray(np.asarray(degraded, dtype=np.float32).transpose(2, 0, 1))
        image = torch.from_numpy(chw).unsqueeze(0)
        whole = fits_whole(*image.shape[-2:], self.whole_max_pixels)
        out = run_single_pass(self.model, image, tile=None if whole else self.tile,
                              overlap=self.overlap, device=self.device)
        return from_tensor(out)

    def warmup(self) -> None:
        """One untimed pass on a tiny image (JIT compilation, CUDA context, caches)."""
        with torch.inference_mode():
            self.model(torch.full((1, 3, WARMUP_SIDE, WARMUP_SIDE), 0.5, device=self.device))
