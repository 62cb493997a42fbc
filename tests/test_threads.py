"""The CPU budget (affinity, cgroup quota) and sizing the thread pools to it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service import threads
from service.cli import main


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_and_the_tightest_ancestor(tmp_path: Path) -> None:
    _write(tmp_path / "kubepods/pod1/cpu.max", "150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n") == pytest.approx(1.5)
    _write(tmp_path / "kubepods/cpu.max", "50000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n") == pytest.approx(0.5)


def test_cgroup_without_a_quota(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, "0::/\n") is None
    assert threads.cgroup_cpu_limit(tmp_path / "missing", "0::/\n") is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    _write(tmp_path / "cpu/docker/abc/cpu.cfs_quota_us", "200000\n")
    _write(tmp_path / "cpu/docker/abc/cpu.cfs_period_us", "100000\n")
    text = "4:memory:/docker/abc\n1:cpu:/docker/abc\n0::/\n"
    assert threads.cgroup_cpu_limit(tmp_path, text) == pytest.approx(2.0)
    _write(tmp_path / "cpu/docker/abc/cpu.cfs_quota_us", "-1\n")
    assert threads.cgroup_cpu_limit(tmp_path, text) is None


@pytest.mark.parametrize(("affinity", "limit", "expected"),
                         [(8, None, 8), (8, 1.5, 2), (8, 0.2, 1), (2, 4.0, 2), (1, None, 1)])
def test_budget_is_the_smaller_of_affinity_and_quota(
    monkeypatch: pytest.MonkeyPatch, affinity: int, limit: float | None, expected: int
) -> None:
    monkeypatch.setattr(threads, "affinity_cpus", lambda: affinity)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: limit)
    assert threads.cpu_budget() == expected


def test_requested_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "cpu_budget", lambda: 3)
    monkeypatch.delenv("DIFFMAMBA_THREADS", raising=False)
    assert threads.requested_threads() == 3
    assert threads.requested_threads(1) == 1
    monkeypatch.setenv("DIFFMAMBA_THREADS", "2")
    assert threads.requested_threads() == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("DIFFMAMBA_THREADS", bad)
        with pytest.raises(ValueError, match="DIFFMAMBA_THREADS"):
            threads.requested_threads()
    with pytest.raises(ValueError, match="at least 1"):
        threads.requested_threads(0)


def test_apply_threads_sizes_torch() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bad_thread_setting_is_a_cli_error(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DIFFMAMBA_THREADS", "lots")
    assert main(["restore", "x.png", "--checkpoint", "missing.safetensors"]) == 2
    assert "DIFFMAMBA_THREADS" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["restore", "x.png", "--checkpoint", "m.safetensors", "--threads", "0"])
    assert exc.value.code == 2


def _fresh_interpreter(code: str, prefix: list[str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "DIFFMAMBA_THREADS",
                        "OMP_WAIT_POLICY")}
    done = subprocess.run([*(prefix or []), sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, check=True, timeout=120)
    return done.stdout.strip()


def test_importing_service_prepares_passive_pools_of_the_budget() -> None:
    out = _fresh_interpreter(
        "import os, service, torch; from service.threads import cpu_budget; "
        "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads(), cpu_budget())")
    policy, torch_threads, budget = out.split()
    assert policy == "PASSIVE" and torch_threads == budget


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset is not installed")
def test_a_pinned_process_runs_one_thread() -> None:
    out = _fresh_interpreter("import service, torch; print(torch.get_num_threads())",
                             ["taskset", "-c", "0"])
    assert out == "1"
