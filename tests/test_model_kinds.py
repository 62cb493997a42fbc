"""The model-kind contract: a new architecture registered with a kind is served everywhere.

A toy ×2 network registered only through ``register`` (what a real one adds besides its
module under service/nn/) loads, restores through ``service.diffusion.restore`` and the
tiled session, and runs on an engine, with nothing else told about it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from service.diffusion import restore
from service.engines import TorchEngine
from service.models import load_checkpoint
from service.models.kinds import (
    DIFFUSION,
    SINGLE_PASS,
    SUPER_RESOLUTION,
    ModelKind,
    model_kind,
    super_resolution,
)
from service.models.registry import ARCHITECTURES, Architecture, kind_of_model
from service.restoration import TilingPolicy, restore_image


@dataclass(frozen=True)
class ToyConfig:
    width: int = 4

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyConfig:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Toy2x(nn.Module):
    """Bilinear ×2 plus a learned 3×3 correction: local, so tiles equal the whole image inside."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.toy_body = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return up + 0.01 * self.toy_body(up)


TOY = Architecture(
    name="toy2x",
    kind=super_resolution(2),
    matches=lambda sd: "toy_body.weight" in sd,
    detect=lambda sd: ToyConfig(),
    config_from_dict=ToyConfig.from_dict,
    build=Toy2x,
)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Toy2x:
    monkeypatch.setitem(ARCHITECTURES, TOY.name, TOY)
    torch.manual_seed(0)
    return Toy2x(ToyConfig())


def test_kinds_say_how_a_network_is_driven() -> None:
    assert (DIFFUSION.input_channels, DIFFUSION.takes_timestep, DIFFUSION.scale) == (6, True, 1)
    assert (SINGLE_PASS.input_channels, SINGLE_PASS.takes_timestep) == (3, False)
    assert (SUPER_RESOLUTION.scale, SUPER_RESOLUTION.pad_multiple) == (4, 8)
    assert model_kind("diffusion") is DIFFUSION and model_kind(SINGLE_PASS) is SINGLE_PASS
    assert json.dumps({"kind": SUPER_RESOLUTION}) == '{"kind": "super_resolution"}'
    x, t = SUPER_RESOLUTION.warmup_inputs(16, batch=2)
    assert x.shape == (2, 3, 16, 16) and t is None
    x, t = DIFFUSION.warmup_inputs(16, batch=2)
    assert x.shape == (2, 6, 16, 16) and t is not None and t.shape == (2,)
    with pytest.raises(ValueError, match="unknown model kind"):
        model_kind("gan")
    with pytest.raises(ValueError, match="input's size"):
        ModelKind("bad", input_channels=6, takes_timestep=True, scale=2)


def test_a_registered_architecture_is_served_everywhere(toy: Toy2x) -> None:
    loaded = load_checkpoint(toy.state_dict())
    assert (loaded.arch, loaded.kind.scale) == ("toy2x", 2)
    assert kind_of_model(loaded.model).scale == 2
    assert kind_of_model(nn.DataParallel(loaded.model)).scale == 2  # wrappers looked through
    assert kind_of_model(lambda x, t: x) is DIFFUSION  # a bare callable is a noise estimator
    x = torch.rand(1, 3, 21, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = restore(loaded.model, x, steps=9, seed=4)
        bare = loaded.model(F.pad(x, (0, 3, 0, 3), mode="reflect"))[..., :42, :26].clamp(0, 1)
    assert out.shape == (1, 3, 42, 26)
    assert (out - bare).abs().max().item() < 1e-5
    tiled, session = restore_image(loaded.model, loaded.kind, x,
                                   TilingPolicy(tile=8, overlap=0, whole_max_pixels=1))
    assert session.num_tiles > 1 and tiled.shape == out.shape
    engine = TorchEngine(loaded.model, loaded.kind, torch.device("cpu"))
    assert engine.run(*loaded.kind.warmup_inputs(16)).shape == (1, 3, 32, 32)
