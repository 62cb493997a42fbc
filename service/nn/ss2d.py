"""SS2D: VMamba's 2-D selective-scan mixer as Diff-Mamba's blocks use it (channels-last), and
the four-direction scan core that VmambaIR's OSS module shares with it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from service.nn.cross_scan import cross_merge, cross_scan
from service.scan import active_backend, selective_scan
from service.scan.chunked import is_exporting

DIRECTIONS = 4


def default_dt_rank(channels: int) -> int:
    return math.ceil(channels / 16)


def init_dt_bias(
    channels: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4
) -> torch.Tensor:
    """Inverse softplus of log-uniform Δ, so a fresh model starts with well-spread time scales."""
    dt = torch.exp(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def project_directions(
    xs: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_rank: int,
    d_state: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-direction input-dependent Δ (B, K·D, L), B and C (B, K, N, L) from (B, K, D, L)."""
    b, k, d, length = xs.shape
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, x_proj_weight)
    dts, bs, cs = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dt_projs_weight)
    return dts.reshape(b, k * d, length), bs.contiguous(), cs.contiguous()


def cpu_fused(x: torch.Tensor) -> bool:
    """Whether SS2D takes the fused CPU route (service.scan.cross: same numbers, a fraction of
    the memory passes): float32 CPU tensors with the numba scan backend, not while exporting or
    tracing (the exported graph must be the generic path's standard ops)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not is_exporting()
        and active_backend(x.device) == "cpu"
    )


def cross_direction_scan(
    x: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
) -> torch.Tensor:
    """VMamba's four-direction core on (B, D, H, W) -> (B, D, H·W), summed in row-major order.

    One function for every mixer that scans a feature map in the four cross directions (SS2D,
    VmambaIR's OSS module): the parameters carry the sizes (x_proj_weight (4, R + 2N, D),
    dt_projs_weight (4, D, R), dt_projs_bias (4, D), A_logs (4·D, N), Ds (4·D,)), and the scan
    goes through the backend dispatch. This is the generic path (any backend, exportable);
    ``service.scan.cross.cross_selective_scan`` is the same function fused for the CPU.
    """
    b, _, h, w = x.shape
    xs = cross_scan(x)
    delta, bs, cs = project_directions(
        xs, x_proj_weight, dt_projs_weight, dt_projs_weight.shape[2], A_logs.shape[1]
    )
    y = selective_scan(
        xs.reshape(b, -1, h * w),
        delta,
        -torch.exp(A_logs.float()),
        bs,
        cs,
        Ds.float(),
        delta_bias=dt_projs_bias.float().reshape(-1),
        delta_softplus=True,
    )
    return cross_merge(y.reshape(xs.shape), h, w)


class SS2D(nn.Module):
    """Input and output (B, H, W, c). d_inner = expand·c, N = d_state, R = dt_rank, K = 4."""

    def __init__(
        self,
        channels: int,
        d_state: int = 32,
        expand: float = 2.0,
        dt_rank: int | None = None,
    ) -> None:
        super().__init__()
        self.d_inner = int(expand * channels)
        self.d_state = d_state
        self.dt_rank = dt_rank if dt_rank is not None else default_dt_rank(channels)
        d_inner, r, n = self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(channels, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=3, padding=1, groups=d_inner)
        x_proj = torch.stack([nn.Linear(d_inner, r + 2 * n, bias=False).weight for _ in range(4)])
        self.x_proj_weight = nn.Parameter(x_proj.detach())
        std = r**-0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(DIRECTIONS, d_inner, r).uniform_(-std, std))
        self.dt_projs_bias = nn.Parameter(
            torch.stack([init_dt_bias(d_inner) for _ in range(DIRECTIONS)])
        )
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32))
        self.A_logs = nn.Parameter(a_log.repeat(DIRECTIONS * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(DIRECTIONS * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, channels, bias=False)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, D, H·W): the four directional selective scans, summed."""
        return cross_direction_scan(
            x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds
        )

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` channels-last throughout: the halves of in_proj are computed apart so the
        conv input is channels-last without a copy (the depthwise conv is also much faster so),
        and the fused kernel reads and writes (B, H, W, d_inner) directly."""
        from service.scan.cross import cross_selective_scan

        d = self.d_inner
        x, z = F.linear(x, self.in_proj.weight[:d]), F.linear(x, self.in_proj.weight[d:])
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        y = cross_selective_scan(
            x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds
        )
        return self.out_proj(self.out_norm(y) * F.silu(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if cpu_fused(x):
            return self.forward_fused(x)
        b, h, w, _ = x.shape
        xz = self.in_proj(x)
        x, z = xz.chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.scan(x).transpose(1, 2).reshape(b, h, w, self.d_inner)
        y = self.out_norm(y) * F.silu(z)
        return self.out_proj(y)
