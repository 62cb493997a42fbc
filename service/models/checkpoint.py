"""Reading checkpoint files safely: BasicSR ``.pth`` (weights only) and our ``.safetensors``."""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from service.models.errors import CheckpointError

StateDict = dict[str, torch.Tensor]
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
PREFERRED_KEYS = ("params_ema", "params", "state_dict", "model")


def unwrap_state_dict(obj: Any) -> StateDict:
    """BasicSR dicts: ``params_ema`` preferred, then ``params``; a bare state dict as is.

    ``module.`` prefixes (DataParallel) are stripped.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of tensors, got {type(obj).__name__}")
    for key in PREFERRED_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            "no tensors found: expected a state dict or a BasicSR dict with 'params_ema'/'params'"
            f" (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def read_checkpoint(path: str | Path) -> tuple[StateDict, dict[str, Any]]:
    """-> (state dict, metadata). Metadata holds ``arch`` and ``config`` for our safetensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    return unwrap_state_dict(_torch_load(path)), {}


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path.name}: refused to load: the file holds pickled objects other than tensors and"
            f" plain containers, which could run code ({_first_line(exc)})"
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{path.name}: not a readable PyTorch checkpoint (truncated or corrupt?):"
            f" {_first_line(exc)}"
        ) from exc


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path.name}: not a readable safetensors file: {_first_line(exc)}"
        ) from exc
    meta: dict[str, Any] = dict(raw_meta)
    if "config" in meta:
        try:
            meta["config"] = json.loads(meta["config"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path.name}: metadata 'config' is not valid JSON") from exc
    return unwrap_state_dict(tensors), meta


def write_safetensors(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], arch: str, config: dict[str, Any],
    extra: Mapping[str, str] | None = None,
) -> None:
    """Our serving format: weights plus the architecture config, so no guessing is needed."""
    from safetensors.torch import save_file

    meta = {"format": "pt", "arch": arch, "config": json.dumps(config), **(extra or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=meta)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
