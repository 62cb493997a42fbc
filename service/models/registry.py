"""Known architectures, detected from state-dict keys the way spandrel does it.

Each entry declares what a caller needs to run the network without knowing it: its kind (how
it is driven), its output scale and the multiple its input sides are padded to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from service.models.detect_diffmamba import detect_diffmamba_config, looks_like_diffmamba
from service.models.detect_vmambair import detect_vmambair_config, looks_like_vmambair
from service.models.detect_vmambair_sr import (
    detect_mambarealsr11_config,
    detect_mambasisr6_config,
    looks_like_mambarealsr11,
    looks_like_mambasisr6,
)
from service.nn.diffmamba import DiffMamba, DiffMambaConfig
from service.nn.resample import MULTIPLE
from service.nn.vmambair import VmambaIR, VmambaIRConfig
from service.nn.vmambair_sr import SR_SCALE, MambaRealSR11Config, MambaSISR6Config, VmambaSR

DIFFUSION = "diffusion"
SINGLE_PASS = "single_pass"
SUPER_RESOLUTION = "super_resolution"
KINDS = (DIFFUSION, SINGLE_PASS, SUPER_RESOLUTION)


@dataclass(frozen=True)
class Architecture:
    name: str
    #: "diffusion" models are noise estimators run by the sampler; "single_pass" restore
    #: directly at the input's size; "super_resolution" also run once, but their output is
    #: ``scale`` times the input's height and width.
    kind: str
    matches: Callable[[dict[str, torch.Tensor]], bool]
    detect: Callable[[dict[str, torch.Tensor]], Any]
    config_from_dict: Callable[[dict[str, Any]], Any]
    build: Callable[[Any], nn.Module]
    #: Output height (and width) / input height: 1 unless the kind is "super_resolution".
    scale: int = 1
    #: Input sides must be multiples of this (three 2× downsamplings); the releases reflect-pad
    #: bottom/right up to it and crop the output back to ``scale`` × the input.
    pad_multiple: int = MULTIPLE

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == SUPER_RESOLUTION) != (self.scale > 1):
            raise ValueError(f"{self.name}: a scale above 1 is what makes a super_resolution kind")


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> None:
    ARCHITECTURES[arch.name] = arch


register(
    Architecture(
        name="diffmamba",
        kind=DIFFUSION,
        matches=looks_like_diffmamba,
        detect=detect_diffmamba_config,
        config_from_dict=DiffMambaConfig.from_dict,
        build=DiffMamba,
        scale=1,
        pad_multiple=MULTIPLE,
    )
)
register(
    Architecture(
        name="vmambair",
        kind=SINGLE_PASS,
        matches=looks_like_vmambair,
        detect=detect_vmambair_config,
        config_from_dict=VmambaIRConfig.from_dict,
        build=VmambaIR,
        scale=1,
        pad_multiple=MULTIPLE,
    )
)
register(
    Architecture(
        name="mambarealsr11",
        kind=SUPER_RESOLUTION,
        matches=looks_like_mambarealsr11,
        detect=detect_mambarealsr11_config,
        config_from_dict=MambaRealSR11Config.from_dict,
        build=VmambaSR,
        scale=SR_SCALE,
        pad_multiple=MULTIPLE,
    )
)
register(
    Architecture(
        name="mambasisr6",
        kind=SUPER_RESOLUTION,
        matches=looks_like_mambasisr6,
        detect=detect_mambasisr6_config,
        config_from_dict=MambaSISR6Config.from_dict,
        build=VmambaSR,
        scale=SR_SCALE,
        pad_multiple=MULTIPLE,
    )
)
