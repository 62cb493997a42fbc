"""Suite-wide settings that keep results independent of the machine running the tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Shared fixtures of the training tests (`single_thread`), importable helpers besides.
pytest_plugins = ["training_helpers"]

# Served outputs are compared at fixed tolerances (parity with the authors' outputs, batched
# against solo, tiled against whole): they must not switch to bf16 on a CPU that has it. Tests of
# the precision choice itself pass the setting explicitly.
os.environ["DIFFMAMBA_PRECISION"] = "fp32"


@pytest.fixture(autouse=True)
def _fixed_thread_counts() -> Iterator[None]:
    """Commands run in-process (``service.cli.main``) install the contention-aware thread
    governor; outside its own tests a pass must not change thread count with the machine's load,
    or equality tests would depend on what else the CI host runs."""
    yield
    from service import thread_governor

    thread_governor.install(None)
