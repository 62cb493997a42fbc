"""Network definitions and the small layers they share."""

from service.nn.diffmamba import DiffMamba, DiffMambaConfig
from service.nn.vmambair import VmambaIR, VmambaIRConfig
from service.nn.vmambair_sr import MambaRealSR11Config, MambaSISR6Config, VmambaSR

__all__ = [
    "DiffMamba",
    "DiffMambaConfig",
    "MambaRealSR11Config",
    "MambaSISR6Config",
    "VmambaIR",
    "VmambaIRConfig",
    "VmambaSR",
]
