"""VmambaIR, the release's deraining network ``Mamber32``: a Restormer-shaped U-Net of OSS blocks.

Input: an RGB image (B, 3, H, W) in [0, 1]; output: the restored image (before clamping), the
network's prediction added to its input. Any H, W: the input is reflect-padded bottom/right to a
multiple of 8 and the output cropped back, as the release's test script does.

Layers shared with Diff-Mamba come from this package (channel LayerNorms, conv + pixel
(un)shuffle resampling, the gated depthwise FFN, the four-direction scan core); what is
VmambaIR's own is the OSS module below. Every size is a `VmambaIRConfig` field; the defaults are
the published config (28,709,875 parameters). Keys and quirks follow the authors' checkpoints
(BasicSR ``params``) exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.nn.ffn import GatedDConvFeedForward
from service.nn.norms import LAYER_NORM_TYPES, ChannelLayerNorm
from service.nn.resample import Downsample, PatchEmbed, Upsample, pad_to_multiple
from service.nn.ss2d import (
    cpu_fused,
    cross_direction_scan,
    default_dt_rank,
    init_dt_bias,
    project_directions,
)
from service.scan import selective_scan

SPATIAL_DIRECTIONS = 4
CHANNEL_DIRECTIONS = 2  # forward and backward along the channel axis


@dataclass(frozen=True)
class VmambaIRConfig:
    """Every size of the network. Defaults are the published deraining config (28.71 M)."""

    dim: int = 48
    num_blocks: tuple[int, int, int, int] = (3, 5, 7, 9)
    num_refinement_blocks: int = 2
    ffn_expansion_factor: float = 2.66
    bias: bool = False  # FFN, channel-reduction and output convs (the OSS convs always have one)
    layer_norm_type: str = "WithBias"  # norm1/norm2 only; the OSS module's norms are WithBias
    d_state: int = 16
    ssm_expand: float = 1.0  # the release's ssm_ratio: d_inner = expand · width
    dt_rank: int | None = None  # None: ceil(width / 16) at every level, as released
    channel_lift: int = 4  # features the pooled channel vector is lifted to (dc_inner)
    channel_dt_rank: int = 6
    channel_d_state: int = 16
    inp_channels: int = 3
    out_channels: int = 3
    dual_pixel_task: bool = False  # deblurring's variant: skip conv, no image residual
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_blocks", tuple(int(n) for n in self.num_blocks))
        problems = []
        if len(self.num_blocks) != 4 or min(self.num_blocks) < 1:
            problems.append(f"num_blocks must be 4 positive ints, got {self.num_blocks}")
        if self.dim < 2 or self.dim % 2:
            problems.append(f"dim must be an even int >= 2, got {self.dim}")
        if self.num_refinement_blocks < 0:
            problems.append(f"num_refinement_blocks must be >= 0, got {self.num_refinement_blocks}")
        if self.layer_norm_type not in LAYER_NORM_TYPES:
            problems.append(
                f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {self.layer_norm_type!r}"
            )
        sizes = ("d_state", "channel_lift", "channel_dt_rank", "channel_d_state")
        problems += [f"{name} must be >= 1" for name in sizes if getattr(self, name) < 1]
        if self.dt_rank is not None and self.dt_rank < 1:
            problems.append(f"dt_rank must be >= 1 or None, got {self.dt_rank}")
        if int(self.ssm_expand * self.dim) < 1:
            problems.append(f"ssm_expand {self.ssm_expand} leaves no inner channels")
        if not self.dual_pixel_task and self.inp_channels != self.out_channels:
            problems.append("the image residual needs inp_channels == out_channels")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["num_blocks"] = list(self.num_blocks)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VmambaIRConfig:
        """Accepts our keys and the release's YAML names (``LayerNorm_type``, ``heads``, ...)."""
        data = dict(data)
        for theirs, ours in (("LayerNorm_type", "layer_norm_type"), ("ssm_ratio", "ssm_expand")):
            if theirs in data:
                data[ours] = data.pop(theirs)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: data.pop(k) for k in list(data) if k not in known}  # e.g. heads (unused)
        return cls(**data, extra=extra)


def _stacked_linear_weights(count: int, in_features: int, out_features: int) -> torch.Tensor:
    """``count`` default-initialised nn.Linear weights, stacked: the release's x_proj init."""
    return torch.stack(
        [nn.Linear(in_features, out_features, bias=False).weight.detach() for _ in range(count)]
    )


class OSSModule(nn.Module):
    """The release's ``SS2D_1`` (attribute ``attn``): four spatial scans plus a channel scan.

    in_conv splits into x (first half) and a SiLU gate z; x goes through a depthwise conv and
    the four cross-direction scans (shared with SS2D), then WithBias ``out_norm`` and the gate.
    The channel branch scans the globally average-pooled feature along its channel axis in
    both directions and its normalised result is *added* to every pixel (Mamber32's merge).
    Because that pool spans the whole feature map, outputs depend on the full image extent.
    """

    def __init__(self, channels: int, config: VmambaIRConfig) -> None:
        super().__init__()
        d = self.d_inner = int(config.ssm_expand * channels)
        n = self.d_state = config.d_state
        r = self.dt_rank = config.dt_rank if config.dt_rank is not None else default_dt_rank(
            channels
        )
        lift, rc, nc = config.channel_lift, config.channel_dt_rank, config.channel_d_state
        self.channel_lift, self.channel_dt_rank, self.channel_d_state = lift, rc, nc

        # Own parameters first, as the release registers them (names are what strict load needs).
        self.x_proj_weight = nn.Parameter(_stacked_linear_weights(SPATIAL_DIRECTIONS, d, r + 2 * n))
        self.xc_proj_weight = nn.Parameter(
            _stacked_linear_weights(CHANNEL_DIRECTIONS, lift, rc + 2 * nc)
        )
        std = r**-0.5
        self.dt_projs_weight = nn.Parameter(
            torch.empty(SPATIAL_DIRECTIONS, d, r).uniform_(-std, std)
        )
        self.dt_projs_bias = nn.Parameter(
            torch.stack([init_dt_bias(d) for _ in range(SPATIAL_DIRECTIONS)])
        )
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32))
        self.A_logs = nn.Parameter(a_log.repeat(SPATIAL_DIRECTIONS * d, 1))
        self.Ds = nn.Parameter(torch.ones(SPATIAL_DIRECTIONS * d))
        # The release draws the channel branch's SSM parameters from a plain normal.
        self.Dsc = nn.Parameter(torch.ones(CHANNEL_DIRECTIONS * lift))
        self.Ac_logs = nn.Parameter(torch.randn(CHANNEL_DIRECTIONS * lift, nc))
        self.dtc_projs_weight = nn.Parameter(torch.randn(CHANNEL_DIRECTIONS, lift, rc))
        self.dtc_projs_bias = nn.Parameter(torch.randn(CHANNEL_DIRECTIONS, lift))

        self.conv_cin = nn.Conv2d(1, lift, kernel_size=1)
        self.conv_cout = nn.Conv2d(lift, 1, kernel_size=1)
        self.channel_norm = ChannelLayerNorm(d, "WithBias")
        self.in_conv = nn.Conv2d(channels, 2 * d, kernel_size=1)
        self.conv2d = nn.Conv2d(d, d, kernel_size=3, padding=1, groups=d)
        self.out_norm = ChannelLayerNorm(d, "WithBias")
        self.out_conv = nn.Conv2d(d, channels, kernel_size=1)

    def channel_scan(self, y: torch.Tensor) -> torch.Tensor:
        """(B, d_inner, H, W) -> (B, d_inner, 1, 1): the two-direction scan over channels.

        The pooled vector is lifted to ``channel_lift`` features per channel by conv_cin; the
        SSM's "channels" are those features and its sequence runs over the d_inner channels.
        """
        b, d = y.shape[:2]
        lift = self.channel_lift
        pooled = y.mean(dim=(2, 3)).reshape(b, 1, d, 1)
        s = self.conv_cin(pooled).reshape(b, lift, d)
        xs = torch.stack([s, s.flip(-1)], dim=1)  # (B, 2, lift, d)
        delta, bs, cs = project_directions(
            xs, self.xc_proj_weight, self.dtc_projs_weight, self.channel_dt_rank,
            self.channel_d_state,
        )  # fmt: skip
        out = selective_scan(
            xs.reshape(b, CHANNEL_DIRECTIONS * lift, d),
            delta,
            -torch.exp(self.Ac_logs.float()),
            bs,
            cs,
            self.Dsc.float(),
            delta_bias=self.dtc_projs_bias.float().reshape(-1),
            delta_softplus=True,
        ).reshape(b, CHANNEL_DIRECTIONS, lift, d)
        merged = out[:, 0] + out[:, 1].flip(-1)  # back to channel order
        c = self.conv_cout(merged.unsqueeze(-1))  # (B, 1, d, 1)
        return self.channel_norm(c.transpose(1, 2))

    def spatial_gated(self, x: torch.Tensor) -> torch.Tensor:
        """in_conv -> (depthwise conv, four-direction scan, out_norm) ⊙ SiLU(z): (B, d, H, W)."""
        b, _, h, w = x.shape
        u, z = self.in_conv(x).chunk(2, dim=1)
        u = F.silu(self.conv2d(u))
        y = cross_direction_scan(
            u, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds
        ).reshape(b, self.d_inner, h, w)
        return self.out_norm(y) * F.silu(z)

    def spatial_gated_fused(self, x: torch.Tensor) -> torch.Tensor:
        """`spatial_gated` channels-last through the fused CPU kernel (service.scan.cross):
        the same numbers without the cross-scan copies. Returns an NCHW view of a channels-last
        tensor (the ops after it accept either layout)."""
        from service.scan.cross import cross_selective_scan

        d = self.d_inner
        weight, bias = self.in_conv.weight[:, :, 0, 0], self.in_conv.bias
        assert bias is not None
        xl = x.permute(0, 2, 3, 1)
        u, z = F.linear(xl, weight[:d], bias[:d]), F.linear(xl, weight[d:], bias[d:])
        u = F.silu(self.conv2d(u.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        y = cross_selective_scan(
            u, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds
        )
        y = self.out_norm.forward_channels_last(y) * F.silu(z)
        return y.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial_gated_fused(x) if cpu_fused(x) else self.spatial_gated(x)
        return self.out_conv(y + self.channel_scan(y))


class OSSBlock(nn.Module):
    """The release's ``MamberBlock``: pre-norm residual OSS module, then pre-norm residual FFN."""

    def __init__(self, channels: int, config: VmambaIRConfig) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels, config.layer_norm_type)
        self.attn = OSSModule(channels, config)
        self.norm2 = ChannelLayerNorm(channels, config.layer_norm_type)
        self.ffn = GatedDConvFeedForward(channels, config.ffn_expansion_factor, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _stage(channels: int, depth: int, config: VmambaIRConfig) -> nn.Sequential:
    return nn.Sequential(*(OSSBlock(channels, config) for _ in range(depth)))


class VmambaIR(nn.Module):
    """``model(img)``: (B, 3, H, W) in [0, 1] -> restored (B, 3, H, W), not clamped."""

    def __init__(self, config: VmambaIRConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = VmambaIRConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword sizes, not both")
        self.config = config
        c1, c2, c3, c4 = (config.dim * m for m in (1, 2, 4, 8))
        n1, n2, n3, n4 = config.num_blocks
        bias = config.bias

        self.patch_embed = PatchEmbed(config.inp_channels, c1)
        self.encoder_level1 = _stage(c1, n1, config)
        self.down1_2 = Downsample(c1)
        self.encoder_level2 = _stage(c2, n2, config)
        self.down2_3 = Downsample(c2)
        self.encoder_level3 = _stage(c3, n3, config)
        self.down3_4 = Downsample(c3)
        self.latent = _stage(c4, n4, config)
        self.up4_3 = Upsample(c4)
        self.reduce_chan_level3 = nn.Conv2d(c4, c3, kernel_size=1, bias=bias)
        self.decoder_level3 = _stage(c3, n3, config)
        self.up3_2 = Upsample(c3)
        self.reduce_chan_level2 = nn.Conv2d(c3, c2, kernel_size=1, bias=bias)
        self.decoder_level2 = _stage(c2, n2, config)
        self.up2_1 = Upsample(c2)
        self.decoder_level1 = _stage(c2, n1, config)  # at 2C: no channel reduction at level 1
        self.refinement = _stage(c2, config.num_refinement_blocks, config)
        self.skip_conv = (
            nn.Conv2d(c1, c2, kernel_size=1, bias=bias) if config.dual_pixel_task else None
        )
        self.output = nn.Conv2d(c2, config.out_channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        x = pad_to_multiple(img)
        emb = self.patch_embed(x)
        enc1 = self.encoder_level1(emb)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        lat = self.latent(self.down3_4(enc3))

        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), enc3], dim=1))
        dec3 = self.decoder_level3(dec3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], dim=1))
        dec2 = self.decoder_level2(dec2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], dim=1))
        dec1 = self.refinement(dec1)
        if self.skip_conv is not None:
            out = self.output(dec1 + self.skip_conv(emb))
        else:
            out = self.output(dec1) + x
        return out[..., :h, :w]


def parameter_count(config: VmambaIRConfig) -> int:
    """Parameters of a config without allocating them (the meta device builds shapes only)."""
    with torch.device("meta"):
        model = VmambaIR(config)
    return sum(math.prod(p.shape) for p in model.parameters())
