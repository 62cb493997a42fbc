"""The contention-aware thread count: measured from /proc/stat-shaped text and fake clocks."""

from __future__ import annotations

import threading

import pytest
import torch

from service import thread_governor
from service.thread_governor import ThreadGovernor, govern_pass, read_busy_seconds
from service.threads import apply_threads

TICKS = 100.0


def _stat(busy_ticks: dict[int, int], idle: int = 1000) -> str:
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
    for cpu, busy in busy_ticks.items():
        # user nice system idle iowait irq softirq steal guest guest_nice
        lines.append(f"cpu{cpu} {busy - 3} 1 1 {idle} 7 1 0 0 5 0")
    lines.append("intr 12345")
    return "\n".join(lines)


class FakeMachine:
    """Two CPUs whose busy ticks, this process's CPU time and the clock advance on demand."""

    def __init__(self) -> None:
        self.busy = {0: 0, 1: 0}
        self.own = 0.0
        self.now = 0.0

    def advance(self, seconds: float, *, others: float, own: float) -> None:
        """Run for `seconds` with `others` CPUs used by other processes and `own` by us."""
        total = (others + own) * seconds * TICKS
        self.busy[0] += round(total / 2)
        self.busy[1] += round(total / 2)
        self.own += own * seconds
        self.now += seconds

    def governor(self, budget: int = 2) -> ThreadGovernor:
        return ThreadGovernor(budget, [0, 1], read_stat=lambda: _stat(self.busy),
                              own_cpu_s=lambda: self.own, clock=lambda: self.now,
                              ticks_per_s=TICKS)


def test_busy_seconds_count_only_the_watched_cpus_and_skip_idle() -> None:
    text = _stat({0: 300, 1: 500, 2: 900})
    assert read_busy_seconds([0, 1], text, TICKS) == pytest.approx(8.0)
    assert read_busy_seconds([2], text, TICKS) == pytest.approx(9.0)
    assert read_busy_seconds([7], text, TICKS) == 0.0


def test_alone_the_whole_budget_runs() -> None:
    m = FakeMachine()
    g = m.governor()
    m.advance(1.0, others=0.0, own=1.9)
    assert g.threads() == 2 and g.others_cpus == pytest.approx(0.0, abs=0.05)


def test_one_busy_competitor_on_two_cores_leaves_one_thread_and_it_comes_back() -> None:
    m = FakeMachine()
    g = m.governor()
    m.advance(1.0, others=1.0, own=1.0)
    assert g.threads() == 1 and g.others_cpus == pytest.approx(1.0, abs=0.05)
    m.advance(1.0, others=1.0, own=1.0)
    assert g.threads() == 1
    m.advance(1.0, others=0.0, own=1.0)  # the competitor is gone
    assert g.threads() == 2


def test_a_light_competitor_keeps_both_threads() -> None:
    m = FakeMachine()
    g = m.governor()
    m.advance(1.0, others=0.3, own=1.7)
    assert g.threads() == 2


def test_never_below_one_thread_nor_above_the_budget() -> None:
    m = FakeMachine()
    g = m.governor(budget=2)
    m.advance(1.0, others=2.0, own=0.0)
    assert g.threads() == 1
    g1 = m.governor(budget=1)
    m.advance(1.0, others=0.0, own=0.0)
    assert g1.threads() == 1


def test_passes_inside_one_window_reuse_the_decision() -> None:
    m = FakeMachine()
    g = m.governor()
    m.advance(1.0, others=1.0, own=1.0)
    assert g.threads() == 1
    m.advance(0.1, others=0.0, own=0.2)  # too short to judge: stays
    assert g.threads() == 1
    m.advance(0.5, others=0.0, own=1.0)
    assert g.threads() == 2


def test_bad_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="budget"):
        ThreadGovernor(0, [0], read_stat=lambda: "", ticks_per_s=TICKS)


def test_govern_pass_sizes_the_pool_of_the_thread_that_runs_the_pass() -> None:
    m = FakeMachine()
    g = m.governor()
    before = torch.get_num_threads()
    seen: list[int | None] = []

    def worker() -> None:
        m.advance(1.0, others=1.0, own=1.0)
        seen.append(govern_pass())
        seen.append(torch.get_num_threads())

    thread_governor.install(g)
    try:
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    finally:
        thread_governor.install(None)
    assert seen == [1, 1]
    assert govern_pass() is None  # nothing installed: the pools stay as they are
    torch.set_num_threads(before)


def test_explicit_thread_counts_are_not_governed(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("DIFFMAMBA_THREADS", raising=False)
    try:
        apply_threads(1)
        assert thread_governor.installed() is None
        monkeypatch.setenv("DIFFMAMBA_THREADS", "1")
        apply_threads(None)
        assert thread_governor.installed() is None
        monkeypatch.delenv("DIFFMAMBA_THREADS")
        monkeypatch.setattr("service.threads.cpu_budget", lambda: 2)
        apply_threads(None)
        governor = thread_governor.installed()
        assert governor is not None and governor.budget == 2
    finally:
        thread_governor.install(None)
        torch.set_num_threads(before)


def test_metrics_show_the_governed_count_and_the_contention() -> None:
    from service.metrics import ServiceMetrics

    m = FakeMachine()
    g = m.governor()
    m.advance(1.0, others=1.0, own=1.0)
    g.threads()
    thread_governor.install(g)
    try:
        text = ServiceMetrics().render().decode()
    finally:
        thread_governor.install(None)
    assert "diffmamba_cpu_threads 1.0" in text
    assert "diffmamba_cpu_contention_cpus 1.0" in text
