"""Mamba-based image restoration: networks, scan kernels, sampler and serving."""

__version__ = "0.1.0"
