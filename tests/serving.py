"""Test helpers for the HTTP service: a models dir of fixture checkpoints and app start-up."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"


def make_models_dir(root: Path) -> Path:
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "diffmamba" / "tiny_withbias_checkpoint.pth", models / "derain.pth")
    shutil.copy(FIXTURES / "diffmamba" / "tiny_biasfree_checkpoint.pth", models / "denoise.pth")
    return models


def png_bytes(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def random_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def wait_ready(client: TestClient, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"service not ready: {client.get('/readyz').json()}")


def started_client(models_dir: Path, **overrides: object) -> TestClient:
    settings = Settings(models_dir=models_dir, device="cpu", **overrides)
    return TestClient(create_app(settings))


class LiveServer:
    """A real uvicorn server on a free loopback port, in a background thread.

    For behaviour that needs a real connection (client disconnects), which the in-process
    TestClient cannot show.
    """

    def __init__(self, models_dir: Path, **overrides: object) -> None:
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        settings = Settings(models_dir=models_dir, device="cpu", **overrides)
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError("live server not ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
