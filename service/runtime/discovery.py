"""Which tasks a models directory serves: one checkpoint per task, named after it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Preference when a task has several files: our format first (no unpickling, config inside).
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class TaskCheckpoint:
    task: str
    path: Path
    card: dict[str, Any]


def _read_card(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"model card {path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise ValueError(f"model card {path} must hold a JSON object")
    return card


def discover_tasks(models_dir: Path) -> list[TaskCheckpoint]:
    """``derain.safetensors`` serves task ``derain``, with ``derain.json`` as its optional card."""
    if not models_dir.is_dir():
        raise FileNotFoundError(f"models directory not found: {models_dir}")
    found: dict[str, TaskCheckpoint] = {}
    for suffix in CHECKPOINT_SUFFIXES:
        for path in sorted(models_dir.glob(f"*{suffix}")):
            task = path.name[: -len(suffix)]
            if task in found:
                logger.warning("task %s: using %s, ignoring %s", task, found[task].path.name,
                               path.name)
                continue
            found[task] = TaskCheckpoint(task, path, _read_card(models_dir / f"{task}.json"))
    return sorted(found.values(), key=lambda c: c.task)


def find_task_checkpoint(models_dir: Path, task: str) -> TaskCheckpoint:
    """The checkpoint serving ``task``; the error names the tasks the directory has."""
    entries = discover_tasks(models_dir)
    for entry in entries:
        if entry.task == task:
            return entry
    available = ", ".join(e.task for e in entries) or "none"
    raise LookupError(f"no model for task {task!r} in {models_dir} (available: {available})")
