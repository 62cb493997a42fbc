"""Telling VmambaIR's two ×4 SR networks apart and reading their configs off the keys.

Both have the deraining network's body and a ``tail`` instead of its ``output`` conv. What
separates them is the channel branch: ``MambaSISR6`` lifts the pooled vector with
``attn.conv_cin``/``conv_cout``, ``MambaRealSR11`` has neither key (its ``xc_proj_weight`` is
(2, R + 2N, 1)). The scale (×4) and the multiplicative merge are not in the keys; the release
fixes both for these networks, so the config classes' defaults supply them.
"""

from __future__ import annotations

from typing import TypeVar

import torch

from service.models.detect_vmambair import CHANNEL_LIFT_KEY, has_oss_body, oss_unet_fields, shape_of
from service.models.errors import CheckpointError
from service.nn.vmambair_sr import MambaRealSR11Config, MambaSISR6Config, VmambaSRConfig

TAIL_KEYS = ("tail.0.0.weight", "tail.0.2.weight", "tail.1.weight")
ConfigT = TypeVar("ConfigT", bound=VmambaSRConfig)


def looks_like_vmambair_sr(sd: dict[str, torch.Tensor]) -> bool:
    return has_oss_body(sd) and all(k in sd for k in TAIL_KEYS)


def looks_like_mambarealsr11(sd: dict[str, torch.Tensor]) -> bool:
    return looks_like_vmambair_sr(sd) and CHANNEL_LIFT_KEY not in sd


def looks_like_mambasisr6(sd: dict[str, torch.Tensor]) -> bool:
    return looks_like_vmambair_sr(sd) and CHANNEL_LIFT_KEY in sd


def _detect(sd: dict[str, torch.Tensor], config_type: type[ConfigT], label: str) -> ConfigT:
    fields = oss_unet_fields(sd, label)
    try:
        return config_type(
            **fields,
            bias="reduce_chan_level3.bias" in sd,  # the tail's convs are biased regardless
            out_channels=shape_of(sd, "tail.1.weight", label)[0],
        )
    except ValueError as exc:
        raise CheckpointError(f"{label} checkpoint sizes are inconsistent: {exc}") from exc


def detect_mambarealsr11_config(sd: dict[str, torch.Tensor]) -> MambaRealSR11Config:
    return _detect(sd, MambaRealSR11Config, "MambaRealSR11")


def detect_mambasisr6_config(sd: dict[str, torch.Tensor]) -> MambaSISR6Config:
    return _detect(sd, MambaSISR6Config, "MambaSISR6")
