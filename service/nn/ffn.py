"""Gated depthwise-conv feed-forward (Restormer's GDFN; Diff-Mamba's DFNN, VmambaIR's EFFN).

On the CPU the block runs in horizontal strips of rows. Whole-image, its four ops each stream
the 2·hidden-channel activation (5.3× the input's channels) through memory: at the first level
of a 256² tile that is 45 MB per op, far beyond the caches, and the block took 52 ms on the
2-core development machine. A strip of STRIP_BYTES of hidden activations stays in cache from
the 1×1 projection through the depthwise conv and the GELU gate to the output projection: 18 ms,
the same numbers bit for bit (each output row depends only on its strip plus one halo row above
and below, which the strip recomputes). GPUs, ONNX export and jit tracing take the whole-image
form: there one kernel per op is what is fast, and an exported graph stays small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIP_BYTES = 3 << 20
"""Hidden activations per strip. Measured at (1, 32, 256, 256): 8-row strips (1.4 MB) 22.3 ms,
16 rows (2.8 MB) 18.0 ms, 32 rows (5.6 MB) 21.5 ms, whole image 51.6 ms."""


def ffn_hidden_features(channels: int, expansion: float) -> int:
    """Hidden width as the releases compute it: truncation, not rounding (48 * 2.66 -> 127)."""
    return int(channels * expansion)


def strip_rows(batch: int, width: int, hidden_channels: int, itemsize: int = 4) -> int:
    """Rows per strip so that the strip's hidden activations fill about STRIP_BYTES."""
    return max(1, STRIP_BYTES // max(1, batch * width * hidden_channels * itemsize))


def _in_strips(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and not torch.onnx.is_in_onnx_export()
        and not torch.jit.is_tracing()
    )


class GatedDConvFeedForward(nn.Module):
    def __init__(self, channels: int, expansion: float = 2.66, bias: bool = True) -> None:
        super().__init__()
        hidden = ffn_hidden_features(channels, expansion)
        self.project_in = nn.Conv2d(channels, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(
            hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias
        )
        self.project_out = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _in_strips(x):
            b, _, h, w = x.shape
            rows = strip_rows(b, w, self.dwconv.out_channels, x.element_size())
            if rows < h:
                return self.forward_strips(x, rows)
        return self.gate_out(self.dwconv(self.project_in(x)))

    def gate_out(self, hidden: torch.Tensor) -> torch.Tensor:
        x1, x2 = hidden.chunk(2, dim=1)
        if _in_strips(hidden) and hidden.is_contiguous(memory_format=torch.channels_last):
            # A channel half of a channels-last tensor is a strided view, on which the CPU's
            # GELU falls back to a scalar loop (erf per element); a dense copy of that half
            # costs far less than the difference (bench/bf16_split.py, "GELU gate").
            x1 = x1.contiguous(memory_format=torch.channels_last)
        return self.project_out(F.gelu(x1) * x2)

    def forward_strips(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """The same function, `rows` output rows at a time. Each strip projects its rows plus a
        halo row on each side, zero rows standing in for the conv's padding at the image's top
        and bottom edges, then convolves with padding on the sides only."""
        height = x.shape[2]
        dw = self.dwconv
        outs = []
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            lo, hi = max(0, top - 1), min(height, bottom + 1)
            hidden = self.project_in(x[:, :, lo:hi])
            hidden = F.pad(hidden, (0, 0, 1 - (top - lo), 1 - (hi - bottom)))
            hidden = F.conv2d(hidden, dw.weight, dw.bias, padding=(0, 1), groups=dw.groups)
            outs.append(self.gate_out(hidden))
        return torch.cat(outs, dim=2)
