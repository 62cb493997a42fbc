"""Serving runtime: which tasks exist, their loaded networks, and the passes batchers run."""

from service.runtime.discovery import TaskCheckpoint, discover_tasks
from service.runtime.task import TaskModel, load_task

__all__ = ["TaskCheckpoint", "TaskModel", "discover_tasks", "load_task"]
