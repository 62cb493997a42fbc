"""Reading a VmambaIR config off a state dict's keys and shapes (no YAML needed).

The signature keys (``attn.in_conv``, the channel branch's ``Ac_logs``) appear in no Diff-Mamba
checkpoint, whose mixer is ``self_attention.in_proj``, so neither detector matches the other's
files. Sizes that the keys cannot show (``heads``, unused by the network) keep their defaults.
"""

from __future__ import annotations

import torch

from service.models.detect_diffmamba import fit_ffn_expansion, stage_depth
from service.models.errors import CheckpointError
from service.nn.ss2d import default_dt_rank
from service.nn.vmambair import VmambaIRConfig

ENCODER_STAGES = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
SIGNATURE_KEYS = (
    "patch_embed.proj.weight",
    "encoder_level1.0.attn.in_conv.weight",
    "encoder_level1.0.attn.Ac_logs",
    "output.weight",
)


def looks_like_vmambair(sd: dict[str, torch.Tensor]) -> bool:
    return all(k in sd for k in SIGNATURE_KEYS)


def _shape(sd: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"VmambaIR checkpoint is missing key {key!r}")
    return tuple(sd[key].shape)


def _dt_rank(ranks: list[tuple[int, int]]) -> int | None:
    """None when every level uses the release's ceil(width / 16), else the one constant rank."""
    if all(r == default_dt_rank(c) for c, r in ranks):
        return None
    if len({r for _, r in ranks}) == 1:
        return ranks[0][1]
    raise CheckpointError(f"per-level dt_rank {ranks} is neither ceil(c/16) nor constant")


def detect_vmambair_config(sd: dict[str, torch.Tensor]) -> VmambaIRConfig:
    dim, inp_channels = _shape(sd, "patch_embed.proj.weight")[:2]
    out_channels = _shape(sd, "output.weight")[0]
    depths = [stage_depth(sd, s) for s in ENCODER_STAGES]
    if min(depths) < 1:
        missing = [s for s, d in zip(ENCODER_STAGES, depths, strict=True) if d < 1]
        raise CheckpointError(f"VmambaIR checkpoint has no blocks under {missing}")
    attn = "encoder_level1.0.attn"
    d_inner = _shape(sd, f"{attn}.in_conv.weight")[0] // 2
    lift, channel_dt_rank = _shape(sd, f"{attn}.dtc_projs_weight")[1:]

    widths = [dim * m for m in (1, 2, 4, 8)]
    ranks, hidden = [], []
    for stage, width in zip(ENCODER_STAGES, widths, strict=True):
        ranks.append((width, _shape(sd, f"{stage}.0.attn.dt_projs_weight")[2]))
        hidden.append((width, _shape(sd, f"{stage}.0.ffn.project_out.weight")[1]))

    try:
        return VmambaIRConfig(
            dim=dim,
            num_blocks=tuple(depths),  # type: ignore[arg-type]
            num_refinement_blocks=stage_depth(sd, "refinement"),
            ffn_expansion_factor=fit_ffn_expansion(hidden),
            bias="output.bias" in sd,
            layer_norm_type="WithBias" if "encoder_level1.0.norm1.body.bias" in sd else "BiasFree",
            d_state=_shape(sd, f"{attn}.A_logs")[1],
            ssm_expand=d_inner / dim,
            dt_rank=_dt_rank(ranks),
            channel_lift=lift,
            channel_dt_rank=channel_dt_rank,
            channel_d_state=_shape(sd, f"{attn}.Ac_logs")[1],
            inp_channels=inp_channels,
            out_channels=out_channels,
            dual_pixel_task="skip_conv.weight" in sd,
        )
    except ValueError as exc:
        raise CheckpointError(f"VmambaIR checkpoint sizes are inconsistent: {exc}") from exc
