"""The batch size follows the device unless it is set."""

from __future__ import annotations

import pytest

from service.engines import EngineOptions
from service.settings import CPU_MAX_BATCH, CUDA_MAX_BATCH, Settings, max_batch_for


def test_default_batch_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFMAMBA_MAX_BATCH", raising=False)
    s = Settings()
    assert max_batch_for(s, "cpu") == CPU_MAX_BATCH == 2
    assert max_batch_for(s, "cuda:0") == CUDA_MAX_BATCH == 8
    assert EngineOptions.for_task(s, "derain", "cuda").max_batch == 8


def test_explicit_batch_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFMAMBA_MAX_BATCH", "5")
    s = Settings()
    assert max_batch_for(s, "cpu") == max_batch_for(s, "cuda") == 5
    assert EngineOptions.for_task(s, "derain").max_batch == 5
