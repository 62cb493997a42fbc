"""The checkpoints shipped in models/ load and actually restore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.diffusion import restore
from service.models import load_checkpoint
from service.runtime import discover_tasks

MODELS = Path(__file__).resolve().parents[1] / "models"


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


def test_models_dir_is_discoverable() -> None:
    tasks = {t.task: t for t in discover_tasks(MODELS)}
    assert "denoise" in tasks
    assert tasks["denoise"].card.get("default_steps") == 4


def test_shipped_denoise_improves_psnr() -> None:
    pytest.importorskip("skimage")
    from skimage import data

    loaded = load_checkpoint(MODELS / "denoise.safetensors")
    assert loaded.arch == "diffmamba" and loaded.config.layer_norm_type == "BiasFree"
    clean = torch.from_numpy(data.astronaut()[100:196, 180:276].astype(np.float32) / 255)
    clean = clean.permute(2, 0, 1)[None]
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * 25 / 255
    noisy = (clean + noise).clamp(0, 1)
    with torch.inference_mode():
        out = restore(loaded.model, noisy, steps=4, seed=0)
    assert _psnr(out, clean) > _psnr(noisy, clean) + 2.0
