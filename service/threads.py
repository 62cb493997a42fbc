"""How many CPU threads this process may use, and sizing every thread pool to that.

Why: torch sizes its OpenMP pool from the host's cores and numba from ``os.cpu_count()``. In a
Kubernetes pod with a CPU limit, under ``taskset``, or on a shared host that is more threads than
the process can run at once, and OpenMP threads that spin at a barrier while a peer is
descheduled burn the very CPU time the peer needs: a pass slows down many times over instead
of in proportion to the CPU it lost. So:

* the budget is the smallest of the CPU affinity mask and the cgroup CPU quota (v2 ``cpu.max``
  or v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), rounded up, at least 1;
* before torch or numba start (``prepare_environment``, run when ``service`` is imported) the
  OpenMP runtimes are told to wait passively (``OMP_WAIT_POLICY=PASSIVE``: sleep, don't spin)
  and both pools default to the budget (``OMP_NUM_THREADS``, ``NUMBA_NUM_THREADS``). Values the
  user already set are kept;
* ``apply_threads`` sets torch's and numba's pools at run time (``--threads``,
  ``DIFFMAMBA_THREADS``). torch and the numba scan kernel run one after the other on the same
  thread, never at once, so one size fits both without oversubscribing.

Nothing here imports torch or numba: the environment must be in place before they load.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _quota_from(quota: str, period: str) -> float | None:
    if quota in ("max", "-1"):
        return None
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota in CPUs (1.5 = one and a half), or None when there is none.

    Walks from this process's cgroup up to the root: a limit on any ancestor applies too, and
    the tightest one wins.
    """
    text = proc_cgroup if proc_cgroup is not None else (_read(PROC_SELF_CGROUP) or "")
    v2, v1 = _cgroup_paths(text)
    limits: list[float] = []
    candidates: list[tuple[Path, str]] = []
    if v2 is not None:
        candidates.append((root, v2))
        candidates.append((root / "unified", v2))
    if v1 is not None:
        candidates.extend((root / name, v1) for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"))
    for base, rel in candidates:
        node = base / rel.lstrip("/")
        while True:
            max_file = _read(node / "cpu.max")
            if max_file is not None:
                quota, _, period = max_file.partition(" ")
                limit = _quota_from(quota, period or "100000")
            else:
                quota_us, period_us = _read(node / "cpu.cfs_quota_us"), _read(
                    node / "cpu.cfs_period_us")
                limit = (_quota_from(quota_us, period_us)
                         if quota_us is not None and period_us is not None else None)
            if limit is not None:
                limits.append(limit)
            if node == base or base not in node.parents:
                break
            node = node.parent
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (``taskset``, cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_budget() -> int:
    """Threads worth running: min(affinity, ceil(cgroup quota)), at least 1."""
    budget = affinity_cpus()
    limit = cgroup_cpu_limit()
    if limit is not None:
        budget = min(budget, max(1, math.ceil(limit - 1e-9)))
    return max(1, budget)


def requested_threads(threads: int | None = None) -> int:
    """``threads`` if given, else ``DIFFMAMBA_THREADS``, else the CPU budget."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        return threads
    env = os.environ.get("DIFFMAMBA_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"DIFFMAMBA_THREADS must be a positive integer, got {env!r}") \
                from None
        if value < 1:
            raise ValueError(f"DIFFMAMBA_THREADS must be a positive integer, got {env!r}")
        return value
    return cpu_budget()


def prepare_environment() -> None:
    """Passive OpenMP waiting and pool sizes, for runtimes that have not started yet."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        n = requested_threads()
    except ValueError:
        n = cpu_budget()  # reported where the setting is applied (apply_threads)
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    if "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(n))


def apply_threads(threads: int | None = None) -> int:
    """Size torch's and numba's pools to ``requested_threads(threads)``; returns the count.

    Without an explicit count the budget is a ceiling: ``service.thread_governor`` lowers each
    CPU pass's count while other processes keep this process's CPUs busy.

    numba cannot grow past the pool it started with (``NUMBA_NUM_THREADS``), so it gets the
    smaller of the two.
    """
    n = requested_threads(threads)
    from service import thread_governor

    explicit = threads is not None or bool(os.environ.get("DIFFMAMBA_THREADS", "").strip())
    if explicit:
        thread_governor.install(None)
    else:
        thread_governor.install_for_budget(n)
    if "numba" not in sys.modules:
        # numba starts NUMBA_NUM_THREADS workers at its first parallel kernel, however few a
        # kernel then asks for: size the pool now, while it can still be sized.
        os.environ["NUMBA_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
    return n
