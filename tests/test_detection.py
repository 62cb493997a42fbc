"""Architecture detection from state-dict keys across every network the service knows.

Diff-Mamba, VmambaIR deraining (``Mamber32``), ``MambaRealSR11`` and ``MambaSISR6`` share layer
names (``patch_embed``, ``encoder_level1``, ...), so each detector must match its own fixture
and no other's; a key set that matches none, or several, is refused with a message naming why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.models import CheckpointError, load_checkpoint, load_model
from service.models.registry import ARCHITECTURES

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINTS = {
    "diffmamba": FIXTURES / "diffmamba" / "tiny_withbias_checkpoint.pth",
    "vmambair": FIXTURES / "vmambair" / "tiny_checkpoint.pth",
    "mambarealsr11": FIXTURES / "vmambair_sr" / "tiny_checkpoint.pth",
    "mambasisr6": FIXTURES / "vmambair_sisr" / "tiny_checkpoint.pth",
}


def _state_dict(arch: str) -> dict[str, torch.Tensor]:
    raw = torch.load(CHECKPOINTS[arch], weights_only=True)
    return raw.get("params_ema", raw.get("params"))


def test_every_architecture_is_registered_with_its_scale() -> None:
    kinds = {name: (a.kind, a.scale, a.pad_multiple) for name, a in ARCHITECTURES.items()
             if name in CHECKPOINTS}
    assert kinds == {
        "diffmamba": ("diffusion", 1, 8),
        "vmambair": ("single_pass", 1, 8),
        "mambarealsr11": ("super_resolution", 4, 8),
        "mambasisr6": ("super_resolution", 4, 8),
    }


@pytest.mark.parametrize("arch", list(CHECKPOINTS))
def test_each_fixture_matches_exactly_its_own_architecture(arch: str) -> None:
    sd = _state_dict(arch)
    assert [a.name for a in ARCHITECTURES.values() if a.matches(sd)] == [arch]
    assert load_checkpoint(CHECKPOINTS[arch]).arch == arch


@pytest.mark.parametrize(
    ("first", "second"),
    [("mambarealsr11", "vmambair"), ("mambasisr6", "diffmamba"), ("diffmamba", "mambarealsr11")],
)
def test_mixed_key_sets_are_ambiguous(first: str, second: str) -> None:
    with pytest.raises(CheckpointError, match="ambiguous"):
        load_model({**_state_dict(first), **_state_dict(second)})


def test_unknown_key_sets_are_refused() -> None:
    sr = _state_dict("mambarealsr11")
    headless = {k: v for k, v in sr.items() if not k.startswith("tail.")}
    cases = [
        {"conv_first.weight": torch.zeros(64, 3, 3, 3), "conv_last.weight": torch.zeros(3, 64)},
        headless,  # the SR body without its tail is neither SR nor deraining
        {k: v for k, v in sr.items() if k != "tail.0.2.weight"},
    ]
    for sd in cases:
        with pytest.raises(CheckpointError, match=r"unrecognised architecture: the keys match "
                                                  r"none of \['diffmamba', 'mambarealsr11'"):
            load_model(sd)


def test_a_block_without_the_lifting_convs_is_named() -> None:
    """The lifted branch is read from the first block; a later block without it is named."""
    sd = _state_dict("mambasisr6")
    for key in [k for k in sd if k.startswith("latent.0.attn.conv_c")]:
        del sd[key]
    with pytest.raises(CheckpointError, match=r"missing keys \(4\): latent.0.attn.conv_cin.bias"):
        load_model(sd)
