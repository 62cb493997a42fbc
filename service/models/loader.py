"""From a checkpoint (path or state dict) to a ready network, strictly and with clear errors."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.models.checkpoint import StateDict, read_checkpoint, unwrap_state_dict
from service.models.errors import CheckpointError
from service.models.kinds import ModelKind
from service.models.registry import ARCHITECTURES, Architecture
from service.nn.resample import use_channels_last

MAX_LISTED = 8


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    arch: str
    kind: ModelKind
    config: Any
    num_params: int
    sha256: str | None
    source: str


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pick_architecture(sd: StateDict, meta: Mapping[str, Any]) -> tuple[Architecture, Any]:
    arch_name = meta.get("arch")
    if arch_name is not None:
        if arch_name not in ARCHITECTURES:
            raise CheckpointError(
                f"metadata names unknown architecture {arch_name!r}; known: {sorted(ARCHITECTURES)}"
            )
        arch = ARCHITECTURES[arch_name]
        config = meta.get("config")
        if config is not None:
            try:
                return arch, arch.config_from_dict(config)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"metadata config is invalid for {arch_name}: {exc}") from exc
        return arch, arch.detect(sd)
    matching = [arch for arch in ARCHITECTURES.values() if arch.matches(sd)]
    if len(matching) > 1:  # the signatures are meant to be disjoint; never guess between them
        raise CheckpointError(
            f"ambiguous checkpoint: the keys match {[a.name for a in matching]}"
        )
    if matching:
        return matching[0], matching[0].detect(sd)
    sample = sorted(sd)[:MAX_LISTED]
    raise CheckpointError(
        f"unrecognised architecture: the keys match none of {sorted(ARCHITECTURES)}"
        f" (first keys: {sample})"
    )


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    more = f" … and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return shown + more


def check_state_dict(model: nn.Module, sd: StateDict, arch: str) -> None:
    """Strict comparison that names every problem before torch's own, terser, error would."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(sd) & set(expected))
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"mismatched shapes ({len(mismatched)}): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit the detected {arch} config: " + "; ".join(problems)
        )
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"checkpoint has non-finite values in {_listing(bad)}")


def load_checkpoint(
    source: str | Path | Mapping[str, Any],
    device: str | torch.device = "cpu",
    channels_last: bool | None = None,
) -> LoadedModel:
    """Detect, build and strictly load; the network is returned in eval mode on ``device``.

    ``channels_last`` (default: on CPU) picks the weights' memory layout, the faster one for
    inference there; training passes False so a resumed run keeps the layout it started with.
    """
    if isinstance(source, (str, Path)):
        sd, meta = read_checkpoint(source)
        sha, label = file_sha256(source), str(source)
    else:
        sd, meta, sha, label = unwrap_state_dict(source), {}, None, "<state dict>"
    arch, config = _pick_architecture(sd, meta)
    model = arch.build(config)
    check_state_dict(model, sd, arch.name)
    model.load_state_dict(sd, strict=True)
    model.to(device).eval()
    if channels_last if channels_last is not None else torch.device(device).type == "cpu":
        use_channels_last(model)
    for p in model.parameters():
        p.requires_grad_(False)
    num_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(model, arch.name, arch.kind, config, num_params, sha, label)


def load_model(
    source: str | Path | Mapping[str, Any], device: str | torch.device = "cpu"
) -> nn.Module:
    """The stable entry point: a path or a state dict -> an ``nn.Module`` in eval mode."""
    return load_checkpoint(source, device).model
