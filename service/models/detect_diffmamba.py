"""Reading a Diff-Mamba config off a state dict's keys and shapes (no YAML needed)."""

from __future__ import annotations

import re

import torch

from service.models.errors import CheckpointError
from service.nn.diffmamba import DiffMambaConfig
from service.nn.ss2d import default_dt_rank

ENCODER_STAGES = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
SIGNATURE_KEYS = (
    "patch_embed.proj.weight",
    "encoder_level1.0.self_attention.in_proj.weight",
    "encoder_level1.0.self_attention.A_logs",
    "output.weight",
)


def looks_like_diffmamba(sd: dict[str, torch.Tensor]) -> bool:
    return all(k in sd for k in SIGNATURE_KEYS)


def stage_depth(sd: dict[str, torch.Tensor], stage: str) -> int:
    pattern = re.compile(rf"^{re.escape(stage)}\.(\d+)\.")
    indices = [int(m.group(1)) for k in sd if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def _shape(sd: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"Diff-Mamba checkpoint is missing key {key!r}")
    return tuple(sd[key].shape)


def fit_ffn_expansion(widths_hidden: list[tuple[int, int]]) -> float:
    """A factor f with int(c·f) == hidden at every level; 2.66 (the release's) when it fits."""
    lo = max(h / c for c, h in widths_hidden)
    hi = min((h + 1) / c for c, h in widths_hidden)
    candidates = [2.66] + [round(lo, digits) for digits in range(1, 8)] + [(lo + hi) / 2]
    for f in candidates:
        if all(int(c * f) == h for c, h in widths_hidden):
            return f
    raise CheckpointError(
        f"FFN widths {widths_hidden} fit no single expansion factor (int(width * f) == hidden)"
    )


def detect_diffmamba_config(sd: dict[str, torch.Tensor]) -> DiffMambaConfig:
    dim, inp_channels = _shape(sd, "patch_embed.proj.weight")[:2]
    out_channels = _shape(sd, "output.weight")[0]
    depths = [stage_depth(sd, s) for s in ENCODER_STAGES]
    if min(depths) < 1:
        missing = [s for s, d in zip(ENCODER_STAGES, depths, strict=True) if d < 1]
        raise CheckpointError(f"Diff-Mamba checkpoint has no blocks under {missing}")
    with_bias = "encoder_level1.0.norm1.body.bias" in sd
    d_state = _shape(sd, "encoder_level1.0.self_attention.A_logs")[1]
    d_inner = _shape(sd, "encoder_level1.0.self_attention.in_proj.weight")[0] // 2
    expand = d_inner / dim

    widths = [dim * m for m in (1, 2, 4, 8)]
    ranks, hidden = [], []
    for stage, width in zip(ENCODER_STAGES, widths, strict=True):
        ranks.append((width, _shape(sd, f"{stage}.0.self_attention.dt_projs_weight")[2]))
        hidden.append((width, _shape(sd, f"{stage}.0.ffn.project_out.weight")[1]))
    if all(r == default_dt_rank(c) for c, r in ranks):
        dt_rank: int | None = None
    elif len({r for _, r in ranks}) == 1:
        dt_rank = ranks[0][1]
    else:
        raise CheckpointError(f"per-level dt_rank {ranks} is neither ceil(c/16) nor constant")

    return DiffMambaConfig(
        dim=dim,
        num_blocks=tuple(depths),  # type: ignore[arg-type]
        d_state=d_state,
        ssm_expand=expand,
        dt_rank=dt_rank,
        ffn_expansion_factor=fit_ffn_expansion(hidden),
        layer_norm_type="WithBias" if with_bias else "BiasFree",
        inp_channels=inp_channels,
        out_channels=out_channels,
    )
