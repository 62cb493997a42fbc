"""Known architectures, detected from state-dict keys the way spandrel does it.

Each entry declares what a caller needs to run the network without knowing it: its kind
(service.models.kinds: how it is driven, its output scale, the multiple its input sides are
padded to). Adding an architecture means a network in service/nn/ and one ``register`` call
here; engines, sessions, the API, the CLI and evaluation read the kind.
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
from service.models.kinds import (
    DIFFUSION,
    KINDS,
    SINGLE_PASS,
    SUPER_RESOLUTION,
    ModelKind,
    super_resolution,
)
from service.nn.diffmamba import DiffMamba, DiffMambaConfig
from service.nn.vmambair import VmambaIR, VmambaIRConfig
from service.nn.vmambair_sr import SR_SCALE, MambaRealSR11Config, MambaSISR6Config, VmambaSR

__all__ = ["ARCHITECTURES", "DIFFUSION", "KINDS", "SINGLE_PASS", "SUPER_RESOLUTION",
           "Architecture", "kind_of_model", "register"]


@dataclass(frozen=True)
class Architecture:
    name: str
    #: How it is driven: a noise estimator run by the sampler, or one pass at ``kind.scale``
    #: times the input's size.
    kind: ModelKind
    matches: Callable[[dict[str, torch.Tensor]], bool]
    detect: Callable[[dict[str, torch.Tensor]], Any]
    config_from_dict: Callable[[dict[str, Any]], Any]
    build: Callable[[Any], nn.Module]

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ModelKind):
            raise TypeError(f"{self.name}: kind must be a ModelKind, got {self.kind!r}")

    @property
    def scale(self) -> int:
        """Output height (and width) / input height."""
        return self.kind.scale

    @property
    def pad_multiple(self) -> int:
        """Input sides are reflect-padded bottom/right to a multiple of this and the output
        cropped back to ``scale`` × the input, as the releases do."""
        return self.kind.pad_multiple


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
    )
)
register(
    Architecture(
        name="mambarealsr11",
        kind=super_resolution(SR_SCALE),
        matches=looks_like_mambarealsr11,
        detect=detect_mambarealsr11_config,
        config_from_dict=MambaRealSR11Config.from_dict,
        build=VmambaSR,
    )
)
register(
    Architecture(
        name="mambasisr6",
        kind=super_resolution(SR_SCALE),
        matches=looks_like_mambasisr6,
        detect=detect_mambasisr6_config,
        config_from_dict=MambaSISR6Config.from_dict,
        build=VmambaSR,
    )
)


def kind_of_model(model: object) -> ModelKind:
    """The kind of a built network (by its class, looking through torch.compile and
    DataParallel/EMA-style ``.module`` wrappers); a plain callable is a noise estimator, the
    convention ``service.diffusion.restore`` has always had."""
    while isinstance(model, nn.Module):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    for arch in ARCHITECTURES.values():
        if isinstance(arch.build, type) and type(model) is arch.build:
            return arch.kind
    return DIFFUSION
