"""Checkpoints for serving and for the authors' tools, from live or saved training weights.

``.safetensors``: the EMA weights (what the release serves) with ``arch``/``config`` metadata, so
``service.models.load_model`` needs no guessing. ``.pth``: BasicSR's ``{"params", "params_ema"}``
of plain tensors, which the authors' code and ``torch.load(weights_only=True)`` both read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from service.models import write_safetensors
from service.training.config import TrainConfig
from service.training.state import load_state, state_path

ARCH = "diffmamba"


def _plain(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def _atomic(path: Path, write: Any) -> None:
    """Write to a temporary name, then rename: a server never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600; exports are meant to be shared
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_weights(
    output: str | Path,
    params: Mapping[str, torch.Tensor],
    params_ema: Mapping[str, torch.Tensor],
    model_config: dict[str, Any],
    metadata: Mapping[str, Any],
    arch: str = ARCH,
    pth: bool = True,
) -> tuple[Path, ...]:
    """Write ``output`` (.safetensors, EMA weights) and, with ``pth``, the same stem with
    ``.pth`` (the authors' BasicSR layout: live and EMA weights)."""
    out = Path(output)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    ema = _plain(params_ema)
    _atomic(out, lambda p: write_safetensors(p, ema, arch, model_config, meta))
    if not pth:
        return (out,)
    bundle_path = out.with_suffix(".pth")
    bundle = {"params": _plain(params), "params_ema": ema}
    _atomic(bundle_path, lambda p: torch.save(bundle, p))
    return out, bundle_path


EXPORT_WEIGHTS = ("ema", "params")


def export_from_workdir(workdir: str | Path, output: str | Path,
                        weights: str = "ema") -> tuple[Path, ...]:
    """Export the current weights of a (possibly unfinished) run in ``workdir``.

    ``weights="params"`` serves the live weights instead of the average (in the .safetensors
    and as the .pth's ``params_ema``): for a run whose average is not worth serving, e.g. one
    trained with a constant EMA decay for few iterations, whose average still holds much of
    its random initialisation.
    """
    if weights not in EXPORT_WEIGHTS:
        raise ValueError(f"weights must be one of {EXPORT_WEIGHTS}, got {weights!r}")
    state = load_state(state_path(workdir))
    served = state["ema"] if weights == "ema" else state["model"]
    meta = stage_metadata(state["config"], state["stage"], state["step"])
    meta["weights"] = weights
    return export_weights(output, state["model"], served, state["model_config"], meta,
                          arch=state["config"].get("arch", ARCH))


def export_best(workdir: str | Path, output: str | Path) -> tuple[Path, Path]:
    """Copy a run's best grid-validation weights (``best.safetensors`` + ``.pth``) to
    ``output``; FileNotFoundError when the run kept none (no grid validation ran)."""
    from service.training.trainer import BEST_NAME

    best = Path(workdir) / BEST_NAME
    if not best.is_file():
        raise FileNotFoundError(f"{best}: no best weights in this run (they are kept when a "
                                "grid validation runs: --val-grid N with held-out photos)")
    out = Path(output)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for src, dst in ((best, out), (best.with_suffix(".pth"), out.with_suffix(".pth"))):
        data = src.read_bytes()
        _atomic(dst, lambda p, data=data: p.write_bytes(data))
        written.append(dst)
    return written[0], written[1]


def stage_metadata(config: Mapping[str, Any], stage: int, step: int) -> dict[str, str]:
    """What the checkpoint is: task, stage, iterations, data, so a served model is traceable."""
    data = config.get("pairs") or config.get("clean") or ""
    meta = {
        "task": str(config.get("task") or ""),
        "stage": str(stage),
        "iterations": str(step),
        "weights": "ema",
        "data": str(data),
        "trained_by": "diffmamba train",
        "sampler_steps": str(config.get("steps", "")),
    }
    if config.get("arch", ARCH) != ARCH:  # single-pass: no sampler
        meta.pop("sampler_steps")
    cfg = TrainConfig.from_dict(dict(config))
    # Diff-Mamba's stage 1 estimates noise; the image loss is stage 2's (and a single pass's).
    meta["objective"] = "noise-l1" if stage == 1 and not cfg.single_pass else cfg.loss_name
    if cfg.degradation is not None:
        meta["degradation"] = cfg.degradation
    if cfg.psnr_ceiling is not None and meta["objective"] == "psnr":
        meta["psnr_ceiling"] = str(cfg.psnr_ceiling)
    return meta
