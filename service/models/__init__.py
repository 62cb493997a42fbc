"""Checkpoint loading and architecture detection."""

from service.models.checkpoint import read_checkpoint, write_safetensors
from service.models.errors import CheckpointError
from service.models.loader import LoadedModel, file_sha256, load_checkpoint, load_model
from service.models.registry import ARCHITECTURES

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "LoadedModel",
    "file_sha256",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "write_safetensors",
]
