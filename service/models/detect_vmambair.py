"""Reading a VmambaIR config off a state dict's keys and shapes (no YAML needed).

The signature keys (``attn.in_conv``, the channel branch's ``Ac_logs``) appear in no Diff-Mamba
checkpoint, whose mixer is ``self_attention.in_proj``, so neither detector matches the other's
files. The deraining network's head is ``output``; the SR networks' is ``tail``
(service.models.detect_vmambair_sr), which keeps the three apart. Sizes that the keys cannot
show (``heads``, unused by the network) keep their defaults, and so does the channel merge: it
has no parameters, and each release network fixes it.
"""

from __future__ import annotations

from typing import Any

import torch

from service.models.detect_diffmamba import fit_ffn_expansion, stage_depth
from service.models.errors import CheckpointError
from service.nn.ss2d import default_dt_rank
from service.nn.vmambair import VmambaIRConfig

ENCODER_STAGES = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
OSS_BODY_KEYS = (
    "patch_embed.proj.weight",
    "encoder_level1.0.attn.in_conv.weight",
    "encoder_level1.0.attn.Ac_logs",
)
SIGNATURE_KEYS = (*OSS_BODY_KEYS, "output.weight")
CHANNEL_LIFT_KEY = "encoder_level1.0.attn.conv_cin.weight"


def has_oss_body(sd: dict[str, torch.Tensor]) -> bool:
    return all(k in sd for k in OSS_BODY_KEYS)


def looks_like_vmambair(sd: dict[str, torch.Tensor]) -> bool:
    return all(k in sd for k in SIGNATURE_KEYS)


def shape_of(sd: dict[str, torch.Tensor], key: str, label: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{label} checkpoint is missing key {key!r}")
    return tuple(sd[key].shape)


def _dt_rank(ranks: list[tuple[int, int]]) -> int | None:
    """None when every level uses the release's ceil(width / 16), else the one constant rank."""
    if all(r == default_dt_rank(c) for c, r in ranks):
        return None
    if len({r for _, r in ranks}) == 1:
        return ranks[0][1]
    raise CheckpointError(f"per-level dt_rank {ranks} is neither ceil(c/16) nor constant")


def _channel_dt_rank(spatial: list[int], channel: list[int], lifted: bool) -> int | None:
    """The lift-free branch's rank follows the spatial one (None); the lifted one is fixed."""
    if not lifted and channel == spatial:
        return None
    if len(set(channel)) == 1:
        return channel[0]
    raise CheckpointError(
        f"per-level channel dt rank {channel} is neither the spatial rank {spatial} nor constant"
    )


def oss_unet_fields(sd: dict[str, torch.Tensor], label: str) -> dict[str, Any]:
    """The body's and the OSS blocks' config fields (service.nn.oss_config.OSSUNetConfig)."""
    dim, inp_channels = shape_of(sd, "patch_embed.proj.weight", label)[:2]
    depths = [stage_depth(sd, s) for s in ENCODER_STAGES]
    if min(depths) < 1:
        missing = [s for s, d in zip(ENCODER_STAGES, depths, strict=True) if d < 1]
        raise CheckpointError(f"{label} checkpoint has no blocks under {missing}")
    attn = "encoder_level1.0.attn"
    d_inner = shape_of(sd, f"{attn}.in_conv.weight", label)[0] // 2
    lifted = CHANNEL_LIFT_KEY in sd

    widths = [dim * m for m in (1, 2, 4, 8)]
    ranks, channel_ranks, hidden = [], [], []
    for stage, width in zip(ENCODER_STAGES, widths, strict=True):
        ranks.append((width, shape_of(sd, f"{stage}.0.attn.dt_projs_weight", label)[2]))
        channel_ranks.append(shape_of(sd, f"{stage}.0.attn.dtc_projs_weight", label)[2])
        hidden.append((width, shape_of(sd, f"{stage}.0.ffn.project_out.weight", label)[1]))

    return {
        "dim": dim,
        "num_blocks": tuple(depths),
        "num_refinement_blocks": stage_depth(sd, "refinement"),
        "ffn_expansion_factor": fit_ffn_expansion(hidden),
        "layer_norm_type": (
            "WithBias" if "encoder_level1.0.norm1.body.bias" in sd else "BiasFree"
        ),
        "d_state": shape_of(sd, f"{attn}.A_logs", label)[1],
        "ssm_expand": d_inner / dim,
        "dt_rank": _dt_rank(ranks),
        "channel_lift": shape_of(sd, f"{attn}.dtc_projs_weight", label)[1] if lifted else None,
        "channel_dt_rank": _channel_dt_rank([r for _, r in ranks], channel_ranks, lifted),
        "channel_d_state": shape_of(sd, f"{attn}.Ac_logs", label)[1],
        "inp_channels": inp_channels,
    }


def detect_vmambair_config(sd: dict[str, torch.Tensor]) -> VmambaIRConfig:
    label = "VmambaIR"
    fields = oss_unet_fields(sd, label)
    try:
        return VmambaIRConfig(
            **fields,
            bias="output.bias" in sd,
            out_channels=shape_of(sd, "output.weight", label)[0],
            dual_pixel_task="skip_conv.weight" in sd,
        )
    except ValueError as exc:
        raise CheckpointError(f"VmambaIR checkpoint sizes are inconsistent: {exc}") from exc
