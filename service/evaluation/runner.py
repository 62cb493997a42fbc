"""Score the degraded input, a classical baseline and a model on the same pairs.

``evaluate`` takes any ``restore_fn(degraded) -> restored`` on float32 (H, W, 3) in [0, 1], so
tests (and other models) plug in without a checkpoint; ``ModelRestorer`` adapts any served
kind of network through the service's restoration session (service.restoration), with a fixed
sampler seed so a run is repeatable.
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
    #: How the input row was brought to the target's size (SR: "bicubic x4"), None: as is.
    input_name: str | None = None

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
            **({"input_upscaled": self.input_name} if self.input_name else {}),
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
        inp = compare(_on_target_grid(pair), pair.clean, crop_border)
        result = ImageResult(pair.name, h, w, inp, base, model, seconds)
        results.append(result)
        if on_image is not None:
            on_image(result)
    scale = pairs[0].scale
    return EvalResult(task, results, chosen.name if chosen is not None else None,
                      input_name=f"bicubic x{scale}" if scale > 1 else None)


def _on_target_grid(pair: Pair) -> np.ndarray:
    """The degraded input as scored: bicubically upscaled where it is smaller (SR)."""
    if pair.scale == 1:
        return pair.degraded
    from service.evaluation.upscale import bicubic_up

    return bicubic_up(pair.degraded, pair.scale)


class ModelRestorer:
    """Any served kind of network -> ``Restorer``, through the service's restoration session
    (diffusion over tiles; one-pass kinds whole up to ``whole_max_pixels``, tiled above it).

    ``kind`` defaults to the network's (service.models.registry); ``sampler_seed`` fixes x_T,
    so repeated runs give identical outputs and metrics.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        steps: int = 4,
        sampler_seed: int = 0,
        tile: int = 256,
        overlap: int = 32,
        device: torch.device | str = "cpu",
        whole_max_pixels: int = 512 * 512,
        kind: str | None = None,
    ) -> None:
        from service.models.kinds import model_kind
        from service.models.registry import kind_of_model
        from service.restoration import TilingPolicy

        self.policy = TilingPolicy(tile=tile, overlap=overlap, whole_max_pixels=whole_max_pixels)
        self.model = model
        self.kind = kind_of_model(model) if kind is None else model_kind(kind)
        self.steps = int(steps)
        self.sampler_seed = int(sampler_seed)
        self.device = torch.device(device)

    def __call__(self, degraded: np.ndarray) -> np.ndarray:
        from service.imaging import from_tensor
        from service.restoration import restore_image

        chw = np.ascontiguousarray(np.asarray(degraded, dtype=np.float32).transpose(2, 0, 1))
        image = torch.from_numpy(chw).unsqueeze(0)
        out, _ = restore_image(self.model, self.kind, image, self.policy, steps=self.steps,
                               seed=self.sampler_seed, device=self.device)
        return from_tensor(out)

    def warmup(self) -> None:
        """One untimed pass on a tiny image (JIT compilation, CUDA context, caches)."""
        from service.restoration import restore_image

        image = torch.full((1, 3, WARMUP_SIDE, WARMUP_SIDE), 0.5)
        restore_image(self.model, self.kind, image, self.policy, steps=1, seed=0,
                      device=self.device)


