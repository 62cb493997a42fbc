"""Waiting for a started ``diffmamba serve`` to answer ``/readyz``: shared by the bench scripts
that launch a server (serve.py, soak.py)."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, timeout: float,
               poll_s: float = 0.2) -> None:
    """Return once ``url``/readyz answers 200; fail early when ``process`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise TimeoutError("the server did not become ready")
