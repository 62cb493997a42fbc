"""Serving runtime: which tasks exist, their loaded networks, the passes batchers run, and the
start-up wiring the service, the CLI and benchmarks share."""

from service.runtime.discovery import TaskCheckpoint, discover_tasks, find_task_checkpoint
from service.runtime.startup import load_tasks, start_batcher
from service.runtime.task import TaskModel, load_task

__all__ = ["TaskCheckpoint", "TaskModel", "discover_tasks", "find_task_checkpoint",
           "load_task", "load_tasks", "start_batcher"]
