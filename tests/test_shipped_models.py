"""The checkpoints shipped in models/ load, are served, and actually restore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.diffusion import restore
from service.models import load_checkpoint
from service.runtime import discover_tasks

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = {p.stem: p for p in sorted(MODELS.glob("*.safetensors"))}
# The least a default must gain over its degraded input on the sample below (dB): modest, as
# several CPU-trained defaults are below their targets (their cards give the full numbers).
MIN_GAIN = {"denoise": 4.0, "denoise-diffmamba": 5.5, "derain": 0.5, "derain-diffmamba": 1.5,
            "deblur": 0.0, "deblur-diffmamba": 0.0, "sr": 0.5}
# The least PSNR (dB) a clean photo keeps through a default: the 33 dB target where a card says
# it is met, else a floor under what the card measures, so a regression still fails.
MIN_IDENTITY = {"denoise": 33.0, "derain": 33.0, "deblur": 33.0, "denoise-diffmamba": 33.0,
                "derain-diffmamba": 22.0, "deblur-diffmamba": 25.0}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def _sample(task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two held-out photos (never in training), centre 128², degraded as the evaluation does:
    (model input, the input on the clean grid, clean). For ×4 SR the input is second-order
    degraded and is compared upscaled bicubically, the baseline a user would otherwise get."""
    if task == "sr":
        from service.evaluation.sr_pairs import sr_pairs
        from service.evaluation.upscale import bicubic_up

        pairs = sr_pairs("second-order", seed=0, size=128, limit=2)
        return (_to_tensor([p.degraded for p in pairs]),
                _to_tensor([bicubic_up(p.degraded, p.scale) for p in pairs]),
                _to_tensor([p.clean for p in pairs]))
    from service.evaluation.pairs import synthetic_pairs

    pairs = synthetic_pairs(task.split("-")[0], seed=0, size=128, limit=2)
    degraded = _to_tensor([p.degraded for p in pairs])
    return degraded, degraded, _to_tensor([p.clean for p in pairs])


def test_models_dir_is_discoverable_with_cards() -> None:
    tasks = {t.task: t for t in discover_tasks(MODELS)}
    assert {"derain", "denoise", "deblur"} <= set(tasks)
    for name, entry in tasks.items():
        assert (MODELS / f"{name}.md").is_file(), f"{name} has no model card"
        assert entry.card.get("default_steps", 4) >= 1


def _restored(name: str, images: torch.Tensor) -> torch.Tensor:
    """The shipped checkpoint ``name`` on ``images``: 4 steps, seed 0, as the cards measure."""
    loaded = load_checkpoint(SHIPPED[name])
    with torch.inference_mode():
        return restore(loaded.model, images, steps=4, seed=0).clamp(0, 1)


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_checkpoint_improves_psnr(name: str) -> None:
    pytest.importorskip("skimage")
    model_input, shown, clean = _sample(name)
    out = _restored(name, model_input)
    gain = _psnr(out, clean) - _psnr(shown, clean)
    print(f"{name}: {gain:+.2f} dB over the input")
    assert gain > MIN_GAIN[name]


@pytest.mark.parametrize("name", sorted(set(SHIPPED) & set(MIN_IDENTITY)))
def test_shipped_checkpoint_leaves_a_clean_photo_alone(name: str) -> None:
    pytest.importorskip("skimage")
    _, _, clean = _sample(name)
    value = _psnr(_restored(name, clean), clean)
    print(f"{name}: a clean photo comes back at {value:.2f} dB")
    assert value >= MIN_IDENTITY[name]
