"""Network definitions and the small layers they share."""

from service.nn.diffmamba import DiffMamba, DiffMambaConfig

__all__ = ["DiffMamba", "DiffMambaConfig"]
