"""Several replicas on one real Redis: a job submitted on one is seen, streamed, cancelled and
fetched on another, and a replica killed mid-job has its job marked failed after the lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import free_port, redis_url  # noqa: F401 (a fixture)
from serving import LiveServer, make_models_dir, png_bytes, random_image

REPO = Path(__file__).resolve().parent.parent
PNG = {"Content-Type": "image/png"}
LEASE_S = 2.0
LONG_JOB = {"steps": 50, "seed": 0}  # with a 200x200 image: 64 tiles x 50 passes, minutes


class Replica:
    """``diffmamba serve`` in its own process (so it can be killed with SIGKILL)."""

    def __init__(self, models: Path, store: str) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "DIFFMAMBA_TILE_SIZE": "32", "DIFFMAMBA_TILE_OVERLAP": "8",
               "DIFFMAMBA_MAX_BATCH": "4", "DIFFMAMBA_JOB_STORE": store,
               "DIFFMAMBA_JOB_LEASE_S": str(LEASE_S), "DIFFMAMBA_JOB_POLL_S": "0.1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
             "--models", str(models), "--device", "cpu", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> Replica:
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.proc.communicate()[0]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "replica not ready within 120 s"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:  # only the process this test started
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models_dir(tmp_path_factory.mktemp("replicas"))


@pytest.fixture(scope="module")
def doomed(models: Path, redis_url: str) -> Iterator[Replica]:  # noqa: F811
    """A replica in its own process, to be killed; it starts while the other tests run."""
    replica = Replica(models, redis_url)
    try:
        yield replica
    finally:
        replica.stop()


@pytest.fixture(scope="module")
def replicas(models: Path, redis_url: str,  # noqa: F811
             doomed: Replica) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two replicas in this process (separate apps, batchers and job managers) on one Redis."""
    settings: dict[str, Any] = {"tile_size": 32, "tile_overlap": 8, "max_batch": 4,
                                "job_store": redis_url, "job_lease_s": LEASE_S,
                                "job_poll_s": 0.1}
    with LiveServer(models, **settings) as a, LiveServer(models, **settings) as b:
        assert a.app.state.service.jobs.owner != b.app.state.service.jobs.owner
        yield a, b


def _submit(url: str, data: bytes, **params: Any) -> dict:
    r = httpx.post(f"{url}/v1/jobs", params={"task": "derain", **params}, content=data,
                   headers=PNG, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()


def _status(url: str, job_id: str) -> dict:
    r = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _until(url: str, job_id: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(url, job_id)
        if status["state"] in states:
            return status
        assert time.monotonic() < deadline, f"job still {status['state']}, wanted {states}"
        time.sleep(0.05)


def _metric(url: str, prefix: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def _stream(url: str, job_id: str, into: list[tuple[str, dict]]) -> threading.Thread:
    def read() -> None:
        with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", timeout=120) as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    into.append((event or "", json.loads(line[6:])))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_submit_on_one_replica_fetch_and_stream_on_the_other(
        replicas: tuple[LiveServer, LiveServer]) -> None:
    a, b = replicas
    data = png_bytes(random_image(40, 56, seed=5))
    job = _submit(a.url, data, steps=4, seed=11)
    events: list[tuple[str, dict]] = []
    reader = _stream(b.url, job["id"], events)
    done = _until(b.url, job["id"], {"succeeded", "failed", "cancelled"})
    assert done["state"] == "succeeded", done
    assert done["progress"]["passes_done"] == done["progress"]["passes_total"] == 2 * 2 * 4
    reader.join(timeout=30)
    assert not reader.is_alive(), "the event stream did not end at the terminal state"
    assert events[-1][0] == "state" and events[-1][1]["state"] == "succeeded"

    result = httpx.get(f"{b.url}/v1/jobs/{job['id']}/result", timeout=10)
    assert result.status_code == 200 and result.headers["x-seed"] == "11"
    sync = httpx.post(f"{b.url}/restore", params={"task": "derain", "steps": 4, "seed": 11},
                      content=data, headers=PNG, timeout=60)
    assert result.content == sync.content
    assert httpx.get(f"{a.url}/v1/jobs/{job['id']}/result", timeout=10).content == sync.content


def test_cancel_on_another_replica_stops_the_owner(replicas: tuple[LiveServer, LiveServer]) -> None:
    a, b = replicas
    dropped = 'diffmamba_dropped_tiles_total{reason="cancelled",task="derain"}'
    before = _metric(a.url, dropped)
    job = _submit(a.url, png_bytes(random_image(200, 200)), **LONG_JOB)
    _until(b.url, job["id"], {"running"})
    deadline = time.monotonic() + 30
    while _metric(a.url, 'diffmamba_queue_depth{task="derain"}') == 0:
        assert time.monotonic() < deadline, "the job never queued tiles on its replica"
        time.sleep(0.01)

    answer = httpx.delete(f"{b.url}/v1/jobs/{job['id']}", timeout=10)
    assert answer.status_code in (200, 202), answer.text
    cancelled = _until(a.url, job["id"], {"cancelled", "failed", "succeeded"}, timeout=10)
    assert cancelled["state"] == "cancelled"
    assert cancelled["error"]["error"] == "cancelled"
    assert _metric(a.url, 'diffmamba_queue_depth{task="derain"}') == 0
    assert _metric(a.url, dropped) > before  # its queued tiles left A's batcher
    result = httpx.get(f"{b.url}/v1/jobs/{job['id']}/result", timeout=10)
    assert result.status_code == 409 and result.json()["error"] == "job_cancelled"


def test_a_killed_replica_has_its_job_failed_after_the_lease(
        replicas: tuple[LiveServer, LiveServer], doomed: Replica) -> None:
    _, b = replicas
    doomed.wait_ready()
    job = _submit(doomed.url, png_bytes(random_image(200, 200)), **LONG_JOB)
    running = _until(b.url, job["id"], {"running"})
    while running["progress"]["tiles"] == 0:  # the first progress write follows the state's
        time.sleep(0.05)
        running = _status(b.url, job["id"])
    assert running["progress"]["tiles"] == 64  # 8 x 8 tiles of 32 px, overlap 8
    assert running["progress"]["passes_total"] == 64 * LONG_JOB["steps"]
    events: list[tuple[str, dict]] = []
    reader = _stream(b.url, job["id"], events)
    time.sleep(0.5)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(timeout=10)
    killed_at = time.monotonic()

    failed = _until(b.url, job["id"], {"failed", "succeeded", "cancelled"},
                    timeout=LEASE_S + 10)
    waited = time.monotonic() - killed_at
    assert failed["state"] == "failed", failed
    assert failed["error"]["error"] == "replica_lost"
    assert waited < LEASE_S + 5
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert events[-1][1]["state"] == "failed"
    gone = httpx.get(f"{b.url}/v1/jobs/{job['id']}/result", timeout=10)
    assert gone.status_code == 409 and gone.json()["error"] == "job_failed"


def test_deployment_files_point_the_replicas_at_their_redis() -> None:
    """compose and Kubernetes: the store URL names the Redis service and port they define."""
    import shutil
    from urllib.parse import urlsplit

    import yaml

    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("diffmamba", "diffmamba-gpu"):
        store = urlsplit(services[name]["environment"]["DIFFMAMBA_JOB_STORE"])
        assert store.scheme == "redis" and store.hostname in services
        assert services[name]["depends_on"][store.hostname]["condition"] == "service_healthy"
        assert services[store.hostname]["image"].startswith("redis:")
        assert f"{store.port}" == "6379"  # redis-server's default, as the command leaves it

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: Kubernetes half not checked")
    for overlay in ("base", "overlays/cpu", "overlays/gpu"):
        out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / overlay)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
        store = urlsplit(docs[("ConfigMap", "diffmamba-config")]["data"]["DIFFMAMBA_JOB_STORE"])
        service = docs[("Service", store.hostname)]
        port = next(p for p in service["spec"]["ports"] if p["port"] == store.port)
        redis = docs[("Deployment", store.hostname)]["spec"]["template"]
        assert service["spec"]["selector"].items() <= redis["metadata"]["labels"].items()
        (container,) = redis["spec"]["containers"]
        assert port["targetPort"] in {p["name"] for p in container["ports"]}
        # The app's own Service must not select the Redis pods (nor the reverse).
        app = docs[("Service", "diffmamba")]["spec"]["selector"]
        assert not app.items() <= redis["metadata"]["labels"].items()
