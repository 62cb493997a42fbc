"""VmambaIR's OSS block: the release's ``MamberBlock`` around its ``SS2D_1`` mixer (``attn``).

One implementation serves the release's three networks; they differ only in the channel
branch (lifted by conv_cin/conv_cout or not) and in how its result joins the spatial output
(added or multiplied), both read from the config (`OSSUNetConfig`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from service.nn.ffn import GatedDConvFeedForward
from service.nn.norms import ChannelLayerNorm
from service.nn.oss_config import OSSUNetConfig
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


def _stacked_linear_weights(count: int, in_features: int, out_features: int) -> torch.Tensor:
    """``count`` default-initialised nn.Linear weights, stacked: the release's x_proj init."""
    return torch.stack(
        [nn.Linear(in_features, out_features, bias=False).weight.detach()
         for _ in range(count)]
    )


class OSSModule(nn.Module):
    """The release's ``SS2D_1`` (attribute ``attn``): four spatial scans plus a channel scan.

    in_conv splits into x (first half) and a SiLU gate z; x goes through a depthwise conv and
    the four cross-direction scans (shared with SS2D), then WithBias ``out_norm`` and the gate.
    The channel branch scans the globally average-pooled feature along its channel axis in
    both directions; its normalised result c joins every pixel of the gated output y as
    ``y + c`` or ``y·c + y`` (``channel_merge``). Because that pool spans the whole feature
    map, outputs depend on the full image extent.
    """

    def __init__(self, channels: int, config: OSSUNetConfig) -> None:
        super().__init__()
        d = self.d_inner = int(config.ssm_expand * channels)
        n = self.d_state = config.d_state
        r = self.dt_rank = config.dt_rank if config.dt_rank is not None else default_dt_rank(
            channels
        )
        lifted = config.channel_lift is not None
        lift = self.channel_lift = config.channel_lift if lifted else 1
        rc = self.channel_dt_rank = (
            config.channel_dt_rank if config.channel_dt_rank is not None else r
        )
        nc = self.channel_d_state = config.channel_d_state
        self.channel_merge = config.channel_merge

        # Own parameters first, in the release's order (only the names matter to strict load).
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
        if not lifted:
            std_c = rc**-0.5
            self.dtc_projs_weight = nn.Parameter(
                torch.empty(CHANNEL_DIRECTIONS, 1, rc).uniform_(-std_c, std_c)
            )
            self.dtc_projs_bias = nn.Parameter(
                torch.stack([init_dt_bias(1) for _ in range(CHANNEL_DIRECTIONS)])
            )
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32))
        self.A_logs = nn.Parameter(a_log.repeat(SPATIAL_DIRECTIONS * d, 1))
        self.Ds = nn.Parameter(torch.ones(SPATIAL_DIRECTIONS * d))
        # Normal (K·lift, N) / (K·lift,) tensors: the release's lift-free branch makes them
        # stride-0 views of one row, which cannot be loaded into on the CPU.
        if lifted:  # the release draws these from a plain normal ...
            self.Dsc = nn.Parameter(torch.ones(CHANNEL_DIRECTIONS * lift))
            self.Ac_logs = nn.Parameter(torch.randn(CHANNEL_DIRECTIONS * lift, nc))
            self.dtc_projs_weight = nn.Parameter(torch.randn(CHANNEL_DIRECTIONS, lift, rc))
            self.dtc_projs_bias = nn.Parameter(torch.randn(CHANNEL_DIRECTIONS, lift))
        else:  # ... but the lift-free branch like the spatial one (S4D / Mamba init, above)
            a_log_c = torch.log(torch.arange(1, nc + 1, dtype=torch.float32))
            self.Ac_logs = nn.Parameter(a_log_c.repeat(CHANNEL_DIRECTIONS, 1))
            self.Dsc = nn.Parameter(torch.ones(CHANNEL_DIRECTIONS))

        self.conv_cin = nn.Conv2d(1, lift, kernel_size=1) if lifted else None
        self.conv_cout = nn.Conv2d(lift, 1, kernel_size=1) if lifted else None
        self.channel_norm = ChannelLayerNorm(d, "WithBias")
        self.in_conv = nn.Conv2d(channels, 2 * d, kernel_size=1)
        self.conv2d = nn.Conv2d(d, d, kernel_size=3, padding=1, groups=d)
        self.out_norm = ChannelLayerNorm(d, "WithBias")
        self.out_conv = nn.Conv2d(d, channels, kernel_size=1)

    def channel_scan(self, y: torch.Tensor) -> torch.Tensor:
        """(B, d_inner, H, W) -> (B, d_inner, 1, 1): the two-direction scan over channels.

        The SSM's "channels" are the pooled vector's features (``channel_lift`` of them after
        conv_cin, or the one value itself) and its sequence runs over the d_inner channels.
        """
        b, d = y.shape[:2]
        lift = self.channel_lift
        pooled = y.mean(dim=(2, 3))
        if self.conv_cin is not None:
            s = self.conv_cin(pooled.reshape(b, 1, d, 1)).reshape(b, lift, d)
        else:
            s = pooled.reshape(b, 1, d)
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
        merged = (out[:, 0] + out[:, 1].flip(-1)).unsqueeze(-1)  # back to channel order
        c = self.conv_cout(merged) if self.conv_cout is not None else merged  # (B, 1, d, 1)
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
        c = self.channel_scan(y)
        # y·c + y, not y·(1 + c): the release's rounding.
        return self.out_conv(y * c + y if self.channel_merge == "multiply" else y + c)


class OSSBlock(nn.Module):
    """The release's ``MamberBlock``: pre-norm residual OSS module, then pre-norm residual FFN."""

    def __init__(self, channels: int, config: OSSUNetConfig) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels, config.layer_norm_type)
        self.attn = OSSModule(channels, config)
        self.norm2 = ChannelLayerNorm(channels, config.layer_norm_type)
        self.ffn = GatedDConvFeedForward(channels, config.ffn_expansion_factor, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def oss_stage(channels: int, depth: int, config: OSSUNetConfig) -> nn.Sequential:
    return nn.Sequential(*(OSSBlock(channels, config) for _ in range(depth)))
