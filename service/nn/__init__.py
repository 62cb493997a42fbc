"""Network definitions and the small layers they share."""

from service.nn.diffmamba import DiffMamba, DiffMambaConfig
from service.nn.vmambair import VmambaIR, VmambaIRConfig

__all__ = ["DiffMamba", "DiffMambaConfig", "VmambaIR", "VmambaIRConfig"]
