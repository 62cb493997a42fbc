"""Whether a reduced precision (bf16, fp16) is good enough: its output on the warm-up tile
against fp32's, in dB PSNR.

Why PSNR with the reference's own range: the network's outputs are ε (noise, roughly unit
variance) for diffusion models and images for single-pass ones, so a fixed data range would mean
different things; the reference's peak-to-peak range makes 45 dB mean "error about 0.56 % of the
signal's span" for both. Kept free of torch devices and engines so it is unit-tested on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_PSNR_DB = 45.0
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def psnr_db(reference: torch.Tensor, candidate: torch.Tensor,
            data_range: float | None = None) -> float:
    """10·log10(range² / MSE); ``data_range`` defaults to the reference's max − min.

    Identical tensors give +inf; a non-finite candidate gives −inf (never accepted).
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    ref, cand = reference.detach().double().cpu(), candidate.detach().double().cpu()
    if not bool(torch.isfinite(cand).all()):
        return -math.inf
    span = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    if span <= 0:
        span = 1.0  # a constant reference: judge the absolute error
    mse = float(((ref - cand) ** 2).mean())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(span * span / mse)


@dataclass(frozen=True)
class PrecisionDecision:
    requested: str
    chosen: str
    psnr_db: float | None  # None when nothing was compared (fp32 requested)

    @property
    def fell_back(self) -> bool:
        return self.chosen != self.requested

    def log_line(self) -> str:
        if self.psnr_db is None:
            return f"precision {self.chosen}"
        verdict = "below" if self.fell_back else "at least"
        action = "falling back to fp32" if self.fell_back else f"using {self.chosen}"
        return (f"precision {self.requested}: {self.psnr_db:.1f} dB PSNR against fp32 on the "
                f"warm-up tile ({verdict} {MIN_PSNR_DB:.0f} dB), {action}")


def decide_precision(requested: str, reference: torch.Tensor | None,
                     candidate: torch.Tensor | None,
                     min_psnr_db: float = MIN_PSNR_DB) -> PrecisionDecision:
    """Keep ``requested`` if its output is within ``min_psnr_db`` of fp32's, else fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "fp32":
        return PrecisionDecision("fp32", "fp32", None)
    if reference is None or candidate is None:
        raise ValueError(f"precision {requested} needs the fp32 and the {requested} outputs")
    score = psnr_db(reference, candidate)
    return PrecisionDecision(requested, requested if score >= min_psnr_db else "fp32", score)
