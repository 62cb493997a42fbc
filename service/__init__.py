"""Mamba-based image restoration: networks, scan kernels, sampler and serving."""

from service.threads import prepare_environment

__version__ = "0.1.0"

# Before torch or numba load: passive OpenMP waiting and pools sized to the CPU budget.
prepare_environment()
