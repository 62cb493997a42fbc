"""Known architectures, detected from state-dict keys the way spandrel does it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from service.models.detect_diffmamba import detect_diffmamba_config, looks_like_diffmamba
from service.models.detect_vmambair import detect_vmambair_config, looks_like_vmambair
from service.nn.diffmamba import DiffMamba, DiffMambaConfig
from service.nn.vmambair import VmambaIR, VmambaIRConfig


@dataclass(frozen=True)
class Architecture:
    name: str
    #: "diffusion" models are noise estimators run by the sampler; "single_pass" restore directly.
    kind: str
    matches: Callable[[dict[str, torch.Tensor]], bool]
    detect: Callable[[dict[str, torch.Tensor]], Any]
    config_from_dict: Callable[[dict[str, Any]], Any]
    build: Callable[[Any], nn.Module]


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> None:
    ARCHITECTURES[arch.name] = arch


register(
    Architecture(
        name="diffmamba",
        kind="diffusion",
        matches=looks_like_diffmamba,
        detect=detect_diffmamba_config,
        config_from_dict=DiffMambaConfig.from_dict,
        build=DiffMamba,
    )
)
register(
    Architecture(
        name="vmambair",
        kind="single_pass",
        matches=looks_like_vmambair,
        detect=detect_vmambair_config,
        config_from_dict=VmambaIRConfig.from_dict,
        build=VmambaIR,
    )
)
