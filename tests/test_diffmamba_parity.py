"""The authors' outputs, reproduced from their checkpoints (fixtures made with their code)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.diffusion import restore
from service.models import load_checkpoint, load_model
from service.scan import set_backend

FIXTURES = Path(__file__).parent / "fixtures" / "diffmamba"
VARIANTS = ["withbias", "biasfree"]
TOL = 1e-4


def _fixture(variant: str) -> tuple[Path, dict]:
    ckpt = FIXTURES / f"tiny_{variant}_checkpoint.pth"
    expected = torch.load(FIXTURES / f"tiny_{variant}_expected.pt", weights_only=True)
    return ckpt, expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_detected_config_matches_fixture(variant: str) -> None:
    ckpt, expected = _fixture(variant)
    loaded = load_checkpoint(ckpt)
    cfg = expected["config"]
    assert loaded.arch == "diffmamba"
    assert loaded.config.dim == cfg["dim"]
    assert list(loaded.config.num_blocks) == cfg["num_blocks"]
    assert loaded.config.layer_norm_type == cfg["LayerNorm_type"]
    assert not loaded.model.training


@pytest.mark.parametrize("backend", ["reference", "chunked", "cpu"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_noise_estimate_matches_release(variant: str, backend: str) -> None:
    ckpt, e = _fixture(variant)
    model = load_model(ckpt)
    set_backend(backend)
    try:
        with torch.no_grad():
            eps = model(torch.cat([2 * e["cond"] - 1, e["x_T"]], dim=1), e["t"])
    finally:
        set_backend(None)
    assert eps.shape == e["eps"].shape
    assert (eps - e["eps"]).abs().max().item() < TOL


@pytest.mark.parametrize("steps", [4, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_restored_matches_release(variant: str, steps: int) -> None:
    ckpt, e = _fixture(variant)
    model = load_model(ckpt)
    with torch.no_grad():
        out = restore(model, e["cond"], steps=steps, x_T=e["x_T"])
    assert (out - e[f"restored_steps{steps}"]).abs().max().item() < TOL


def test_params_preferred_over_bare_keys_when_no_ema(tmp_path: Path) -> None:
    ckpt, e = _fixture("withbias")
    raw = torch.load(ckpt, weights_only=True)
    only_params = {"params": {f"module.{k}": v for k, v in raw["params_ema"].items()}}
    path = tmp_path / "dp.pth"
    torch.save(only_params, path)
    model = load_model(path)
    with torch.no_grad():
        eps = model(torch.cat([2 * e["cond"] - 1, e["x_T"]], dim=1), e["t"])
    assert (eps - e["eps"]).abs().max().item() < TOL
