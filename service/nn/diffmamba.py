"""Diff-Mamba's noise estimator (the release's ``DFT``): a 4-level U-Net of SS2D blocks.

Input: ``cat(2y - 1, x_t)`` (6 channels) and one float timestep per batch item. Output: ε, as a
residual on the last 3 input channels. Keys and quirks follow the authors' checkpoints exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from service.nn.ffn import GatedDConvFeedForward
from service.nn.norms import LAYER_NORM_TYPES, ChannelLayerNorm
from service.nn.resample import MULTIPLE, Downsample, PatchEmbed, Upsample, pad_to_multiple
from service.nn.ss2d import SS2D
from service.nn.time_embedding import sinusoidal_silu_embedding

__all__ = ["MULTIPLE", "DiffMamba", "DiffMambaConfig", "pad_to_multiple"]


@dataclass(frozen=True)
class DiffMambaConfig:
    """Every size of the network. Defaults are the published config (36.6 M parameters)."""

    dim: int = 48
    num_blocks: tuple[int, int, int, int] = (4, 6, 6, 8)
    d_state: int = 32
    ssm_expand: float = 2.0
    dt_rank: int | None = None  # None: ceil(width / 16) at every level, as released
    ffn_expansion_factor: float = 2.66
    layer_norm_type: str = "WithBias"
    inp_channels: int = 6
    out_channels: int = 3
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_blocks", tuple(int(n) for n in self.num_blocks))
        if len(self.num_blocks) != 4 or min(self.num_blocks) < 1:
            raise ValueError(f"num_blocks must be 4 positive ints, got {self.num_blocks}")
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"dim must be an even int >= 2, got {self.dim}")
        if self.layer_norm_type not in LAYER_NORM_TYPES:
            raise ValueError(
                f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {self.layer_norm_type!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["num_blocks"] = list(self.num_blocks)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffMambaConfig:
        """Accepts our keys and the release's YAML names (``LayerNorm_type``, ``heads``, ...)."""
        data = dict(data)
        if "LayerNorm_type" in data:
            data["layer_norm_type"] = data.pop("LayerNorm_type")
        if "ffn_factor" in data and "ffn_expansion_factor" not in data:
            data.pop("ffn_factor")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: data.pop(k) for k in list(data) if k not in known}
        return cls(**data, extra=extra)


class DiffMambaBlock(nn.Module):
    """The release's ``DTB``. Quirk kept on purpose: the residual base is the *normalised* input."""

    def __init__(self, channels: int, config: DiffMambaConfig) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels, config.layer_norm_type)
        self.self_attention = SS2D(
            channels, d_state=config.d_state, expand=config.ssm_expand, dt_rank=config.dt_rank
        )
        self.norm2 = ChannelLayerNorm(channels, config.layer_norm_type)
        self.ffn = GatedDConvFeedForward(channels, config.ffn_expansion_factor, bias=True)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        mixed = self.self_attention((x + temb).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + mixed
        return x + self.ffn(self.norm2(x + temb))


class TimeConditionedStage(nn.ModuleList):
    """A level's blocks; all of them share that level's time embedding."""

    def __init__(self, channels: int, depth: int, config: DiffMambaConfig) -> None:
        super().__init__([DiffMambaBlock(channels, config) for _ in range(depth)])
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        temb = sinusoidal_silu_embedding(t, self.channels).to(x.dtype)
        for block in self:
            x = block(x, temb)
        return x


class DiffMamba(nn.Module):
    def __init__(self, config: DiffMambaConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = DiffMambaConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword sizes, not both")
        self.config = config
        c1, c2, c3, c4 = (config.dim * m for m in (1, 2, 4, 8))
        n1, n2, n3, n4 = config.num_blocks

        self.patch_embed = PatchEmbed(config.inp_channels, c1)
        self.encoder_level1 = TimeConditionedStage(c1, n1, config)
        self.down1_2 = Downsample(c1)
        self.encoder_level2 = TimeConditionedStage(c2, n2, config)
        self.down2_3 = Downsample(c2)
        self.encoder_level3 = TimeConditionedStage(c3, n3, config)
        self.down3_4 = Downsample(c3)
        self.latent = TimeConditionedStage(c4, n4, config)
        self.up4_3 = Upsample(c4)
        self.reduce_chan_level3 = nn.Conv2d(c4, c3, kernel_size=1, bias=False)
        self.decoder_level3 = TimeConditionedStage(c3, n3, config)
        self.up3_2 = Upsample(c3)
        self.reduce_chan_level2 = nn.Conv2d(c3, c2, kernel_size=1, bias=False)
        self.decoder_level2 = TimeConditionedStage(c2, n2, config)
        self.up2_1 = Upsample(c2)
        self.decoder_level1 = TimeConditionedStage(c2, n1, config)
        self.output = nn.Conv2d(c2, config.out_channels, kernel_size=3, padding=1, bias=False)

    def forward(self, inp: torch.Tensor, t: torch.Tensor | float | Sequence[float]) -> torch.Tensor:
        """ε for ``inp`` (B, 6, H, W) at timesteps ``t`` (B,); any H, W (padded, then cropped)."""
        h, w = inp.shape[-2:]
        t = torch.as_tensor(t, dtype=torch.float32, device=inp.device).reshape(-1)
        if t.numel() == 1 and inp.shape[0] > 1:
            t = t.expand(inp.shape[0])
        x_t = inp[:, -self.config.out_channels :]
        x = pad_to_multiple(inp)

        enc1 = self.encoder_level1(self.patch_embed(x), t)
        enc2 = self.encoder_level2(self.down1_2(enc1), t)
        enc3 = self.encoder_level3(self.down2_3(enc2), t)
        lat = self.latent(self.down3_4(enc3), t)

        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), enc3], dim=1))
        dec3 = self.decoder_level3(dec3, t)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], dim=1))
        dec2 = self.decoder_level2(dec2, t)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], dim=1), t)
        return self.output(dec1)[..., :h, :w] + x_t
