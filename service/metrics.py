"""Prometheus metrics, one registry per app so several apps (tests) never collide.

Every name starts with ``diffmamba_``; the README documents each one.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from service import thread_governor

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
TILE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "diffmamba_requests", "Restore requests by task and HTTP status code",
            ["task", "status"], registry=r,
        )
        self.request_seconds = Histogram(
            "diffmamba_request_duration_seconds", "End-to-end restore latency",
            ["task"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "diffmamba_queue_wait_seconds", "Time a tile waited in the batcher queue",
            ["task"], buckets=QUEUE_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "diffmamba_batch_size", "Tiles per network pass (before padding)",
            ["task"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.network_pass_seconds = Histogram(
            "diffmamba_network_pass_seconds", "Wall time of one batched network pass",
            ["task"], buckets=PASS_BUCKETS, registry=r,
        )
        self.tiles_per_request = Histogram(
            "diffmamba_tiles_per_request", "Tiles an image was cut into",
            ["task"], buckets=TILE_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "diffmamba_queue_depth", "Tiles waiting in the batcher queue", ["task"], registry=r
        )
        self.queue_capacity = Gauge(
            "diffmamba_queue_capacity", "Queued tiles per task before 503 (max_queue_size)",
            ["task"], registry=r,
        )
        self.in_flight = Gauge(
            "diffmamba_requests_in_flight", "Restore requests being processed", ["task"],
            registry=r,
        )
        self.dropped = Counter(
            "diffmamba_dropped_tiles", "Tiles dropped before running (deadline, cancel, error)",
            ["task", "reason"], registry=r,
        )
        self.gpu_allocated = Gauge(
            "diffmamba_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated",
            ["device"], registry=r,
        )
        self.gpu_reserved = Gauge(
            "diffmamba_gpu_memory_reserved_bytes", "torch.cuda.memory_reserved",
            ["device"], registry=r,
        )
        self.gpu_peak = Gauge(
            "diffmamba_gpu_memory_peak_bytes", "torch.cuda.max_memory_allocated",
            ["device"], registry=r,
        )
        self.gpu_total = Gauge(
            "diffmamba_gpu_memory_total_bytes", "Total memory of the CUDA device",
            ["device"], registry=r,
        )
        self.resident_memory = Gauge(
            "diffmamba_process_resident_memory_bytes", "Resident set size of the process",
            registry=r,
        )
        self.cpu_threads = Gauge(
            "diffmamba_cpu_threads",
            "Threads of the last CPU network pass (lowered while other processes use the cores)",
            registry=r,
        )
        self.cpu_others = Gauge(
            "diffmamba_cpu_contention_cpus",
            "CPUs other processes used on this process's CPUs, at the last measurement",
            registry=r,
        )
        self.loop_lag_seconds = Histogram(
            "diffmamba_event_loop_lag_seconds",
            "How late the event loop ran a timer it scheduled (sampled every 0.1 s)",
            buckets=LOOP_LAG_BUCKETS, registry=r,
        )
        self.model_load_seconds = Gauge(
            "diffmamba_model_load_seconds", "Time to load and warm a task's model", ["task"],
            registry=r,
        )
        self.model_info = Info(
            "diffmamba_model", "Checkpoint hash and config of each task", ["task"], registry=r
        )
        self.ready = Gauge("diffmamba_ready", "1 when every model is loaded and warm", registry=r)

    def describe_model(self, task: str, arch: str, kind: str, sha256: str | None,
                       config: dict) -> None:
        self.model_info.labels(task=task).info({
            "arch": arch, "kind": kind, "sha256": sha256 or "",
            "config": json.dumps(config, sort_keys=True),
        })

    def observe_batch(self, task: str, size: int, queue_waits: Sequence[float],
                      run_seconds: float) -> None:
        self.batch_size.labels(task=task).observe(size)
        self.network_pass_seconds.labels(task=task).observe(run_seconds)
        hist = self.queue_wait_seconds.labels(task=task)
        for wait in queue_waits:
            hist.observe(wait)

    def refresh_process_gauges(self) -> None:
        """Sampled at scrape time: memory gauges are only useful when current."""
        self.resident_memory.set(current_rss_bytes())
        governor = thread_governor.installed()
        if governor is not None:
            self.cpu_threads.set(governor.current)
            self.cpu_others.set(governor.others_cpus)
        else:
            self.cpu_threads.set(torch.get_num_threads())
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                label = f"cuda:{index}"
                self.gpu_allocated.labels(device=label).set(torch.cuda.memory_allocated(index))
                self.gpu_reserved.labels(device=label).set(torch.cuda.memory_reserved(index))
                self.gpu_peak.labels(device=label).set(torch.cuda.max_memory_allocated(index))
                self.gpu_total.labels(device=label).set(
                    torch.cuda.get_device_properties(index).total_memory
                )

    def render(self) -> bytes:
        self.refresh_process_gauges()
        return generate_latest(self.registry)


def current_rss_bytes() -> int:
    """Current (not peak) RSS from /proc where available, else the peak from getrusage."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        pages = int(statm.read_text().split()[1])
        return pages * resource.getpagesize()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
