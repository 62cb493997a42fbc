"""One selective-scan function, several backends (reference, chunked torch, numba CPU, CUDA:
mamba-ssm or our Triton kernel).

`selective_scan` is the only entry point the networks use; the backend is chosen once per device
type (DIFFMAMBA_SCAN=reference|chunked|cpu|cuda|triton overrides the automatic choice) and logged
once.
"""

from __future__ import annotations

from service.scan.chunked import selective_scan_chunked
from service.scan.dispatch import (
    BACKENDS,
    ENV_VAR,
    active_backend,
    available_backends,
    selective_scan,
    set_backend,
    warmup,
)
from service.scan.reference import selective_scan_reference

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "active_backend",
    "available_backends",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
    "set_backend",
    "warmup",
]
