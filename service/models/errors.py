"""One error type for every way a checkpoint can be unusable, with a message a user can act on."""

from __future__ import annotations


class CheckpointError(ValueError):
    """The file or state dict cannot be served: unreadable, unsafe, or not a known architecture."""
