"""Whether a reduced precision (bf16, fp16) is good enough: its output on the warm-up tile
against fp32's, in dB PSNR.

Why PSNR with the reference's own range: the network's outputs are ε (noise, roughly unit
variance) for diffusion models and images for single-pass ones, so a fixed data range would mean
different things; the reference's peak-to-peak range makes 45 dB mean "error about 0.56 % of the
signal's span" for both. Kept free of torch devices and engines so it is unit-tested on a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch

MIN_PSNR_DB = 45.0
PRECISIONS = ("fp32", "bf16", "fp16")
SETTINGS = ("auto", *PRECISIONS)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AMX tiles and AVX-512 BF16. Without
# them oneDNN emulates bf16 and it is slower than fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The autocast region a pass at ``precision`` runs in (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


@functools.cache
def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (``CPU_BF16_FLAGS``)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in CPU_BF16_FLAGS)
    return False


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """The precision to try on ``device`` and, when it differs from ``requested``, why.

    ``auto`` is bf16 on a CPU with native bf16 and fp32 elsewhere (on CUDA, reduced precision is
    asked for explicitly). A reduced precision the hardware lacks becomes fp32: emulated bf16
    would be slower than the fp32 it replaces. fp16 is a CUDA feature.
    """
    if requested not in SETTINGS:
        raise ValueError(f"precision must be one of {SETTINGS}, got {requested!r}")
    if device.type == "cpu":
        if requested == "auto":
            return ("bf16", None) if cpu_has_bf16() else (
                "fp32", "this CPU has no native bf16 (amx_bf16/avx512_bf16)")
        if requested == "bf16" and not cpu_has_bf16():
            return "fp32", "this CPU has no native bf16 (amx_bf16/avx512_bf16)"
        if requested == "fp16":
            return "fp32", "fp16 applies on CUDA only"
        return requested, None
    if device.type == "cuda":
        if requested == "auto":
            return "fp32", None
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp32", "this GPU has no bf16 support"
        return requested, None
    return "fp32", None if requested in ("auto", "fp32") else f"{requested} needs a CPU or CUDA"


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
