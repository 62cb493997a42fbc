"""Fewer CPU threads while other processes keep the CPUs this process may run on busy.

Why: the thread budget (``service.threads``) sees the affinity mask and the cgroup quota, not an
unrelated busy process on the same cores. There a parallel region of N threads finishes only
when its slowest thread has had its share of a contended core, so every pass waits for the
scheduler: two threads beside one busy process on two cores run several times slower than alone,
while one thread loses only the core it would have shared. The governor measures, between
passes, how much CPU *other* processes used on this process's CPUs (busy time of those CPUs from
``/proc/stat`` minus this process's own CPU time) and runs the next pass on the cores left free:
``round(free)`` threads, at least 1, at most the budget. When the competitor goes, the next
measurement sees the cores free again and the threads come back.

It applies only where the thread count was not set explicitly (``--threads``,
``DIFFMAMBA_THREADS``): an explicit count is a promise to the operator. torch's and numba's
pool sizes are per calling thread, so the governor sets them in the thread that runs the pass,
and only when the count changes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")

WINDOW_S = 0.25
"""Shortest measurement window: ``/proc/stat`` counts in clock ticks (10 ms), so shorter windows
are mostly rounding. Passes closer together than this reuse the last decision."""

FREE_CORE_THRESHOLD = 0.6
"""A core counts as free when at least this much of it was left by other processes: a thread
on a core that is 40 % busy elsewhere still finishes its share of the region in time."""


@dataclass(frozen=True)
class CpuSample:
    """Busy seconds of the watched CPUs, this process's CPU seconds, and when."""

    busy_s: float
    own_s: float
    at_s: float


def read_busy_seconds(cpus: Iterable[int], text: str, ticks_per_s: float) -> float:
    """Seconds the given CPUs spent on anything but idle and I/O wait, from /proc/stat text.

    A cpuN line is ``user nice system idle iowait irq softirq steal guest guest_nice`` ticks;
    guest time is already inside user, so it is not added again.
    """
    wanted = {f"cpu{c}" for c in cpus}
    busy = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        fields = [int(v) for v in rest.split()]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy += user + nice + system + irq + softirq + steal
    return busy / ticks_per_s


class ThreadGovernor:
    """Thread count for the next CPU pass: the budget less the cores other processes use."""

    def __init__(
        self,
        budget: int,
        cpus: Iterable[int] | None = None,
        *,
        read_stat: Callable[[], str] | None = None,
        own_cpu_s: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        ticks_per_s: float | None = None,
        window_s: float = WINDOW_S,
    ) -> None:
        if budget < 1:
            raise ValueError(f"budget must be at least 1, got {budget}")
        self.budget = budget
        self.cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        self._read_stat = read_stat or (lambda: PROC_STAT.read_text())
        self._own_cpu_s, self._clock = own_cpu_s, clock
        self._ticks = ticks_per_s or float(os.sysconf("SC_CLK_TCK"))
        self.window_s = window_s
        self._lock = threading.Lock()
        self._last = self._sample()
        self._threads = budget
        self.others_cpus = 0.0

    def _sample(self) -> CpuSample:
        busy = read_busy_seconds(self.cpus, self._read_stat(), self._ticks)
        return CpuSample(busy_s=busy, own_s=self._own_cpu_s(), at_s=self._clock())

    @property
    def current(self) -> int:
        """The count of the last decision (what the latest pass ran with)."""
        return self._threads

    def threads(self) -> int:
        """The count for a pass starting now (remeasured at most once per window)."""
        with self._lock:
            if self._clock() - self._last.at_s < self.window_s:
                return self._threads  # no /proc read inside a window
            now = self._sample()
            elapsed = now.at_s - self._last.at_s
            others = (now.busy_s - self._last.busy_s) - (now.own_s - self._last.own_s)
            self.others_cpus = min(float(len(self.cpus)), max(0.0, others / max(elapsed, 1e-6)))
            free = len(self.cpus) - self.others_cpus
            self._threads = max(1, min(self.budget, int(free + 1.0 - FREE_CORE_THRESHOLD)))
            self._last = now
            return self._threads


_governor: ThreadGovernor | None = None
_applied = threading.local()


def install(governor: ThreadGovernor | None) -> None:
    """Make ``governor`` decide the thread count of every CPU pass (None: fixed counts)."""
    global _governor
    _governor = governor


def installed() -> ThreadGovernor | None:
    return _governor


def install_for_budget(budget: int) -> ThreadGovernor | None:
    """Install a governor over this process's CPUs when there is something to govern:
    a budget above one thread and a readable /proc/stat (Linux)."""
    if budget < 2:
        install(None)
        return None
    try:
        governor = ThreadGovernor(budget)
    except (OSError, ValueError, AttributeError):
        install(None)
        return None
    install(governor)
    return governor


def govern_pass() -> int | None:
    """Size this thread's torch and numba pools for the pass it is about to run.

    Returns the count set, or None when no governor is installed (the pools stay as they are).
    """
    governor = _governor
    if governor is None:
        return None
    try:
        n = governor.threads()
    except (OSError, ValueError):
        return None
    # numba loads with the first scan kernel, so a count applied before then is applied again.
    numba = sys.modules.get("numba")
    state = (n, numba is not None)
    if getattr(_applied, "state", None) != state:
        import torch

        torch.set_num_threads(n)
        if numba is not None:
            with contextlib.suppress(ValueError, AttributeError):
                numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        _applied.state = state
    return n
