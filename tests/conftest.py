"""Suite-wide settings that keep results independent of the machine running the tests."""

from __future__ import annotations

import os

# Served outputs are compared at fixed tolerances (parity with the authors' outputs, batched
# against solo, tiled against whole): they must not switch to bf16 on a CPU that has it. Tests of
# the precision choice itself pass the setting explicitly.
os.environ["DIFFMAMBA_PRECISION"] = "fp32"
