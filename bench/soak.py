"""Soak test: N mixed requests against a live ``diffmamba serve``; server RSS and statuses.

A leak that costs a few kilobytes per request is invisible in unit tests and fatal after a week.
This drives a real server process with the traffic it will see: every served task (diffusion
and single-pass), images of several sizes, formats and modes, raw and multipart bodies,
concurrent clients, async jobs (polled, streamed, fetched, cancelled), bad input of every kind,
and clients that go away mid-upload or mid-compute. It samples the server's resident memory
throughout and reports:

* RSS growth between the window around request ``--warmup`` (default 500) and the last
  requests, each window's peak (target: under 10 %; the first requests allocate caches,
  thread pools and allocator arenas that are reused afterwards);
* the count of each (scenario, HTTP status); any 5xx fails the run.

    python bench/soak.py --requests 2000 --concurrency 4     # starts a server on models/
    python bench/soak.py --url http://127.0.0.1:8000 --pid 1234 --requests 2000

Exit status 1 when a 5xx was answered or the RSS growth is over ``--max-growth``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image
from server_ready import wait_ready

REPO = Path(__file__).resolve().parent.parent
SIZES = [(16, 16), (24, 40), (33, 47), (64, 64), (80, 56), (96, 128), (128, 96)]
LARGE = (320, 240)  # two tiles at the default tile size
MAX_UPLOAD = 1 << 20  # the server's max_upload_bytes when this script starts it
# (scenario, weight): the traffic mix.
MIX = [("restore", 30), ("restore_multipart", 10), ("restore_large", 3), ("job", 8),
       ("job_events", 3), ("job_cancel", 3), ("restore_async", 2), ("bad_input", 20),
       ("disconnect_upload", 5), ("disconnect_compute", 5), ("probe", 11)]


def rss_of(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def rss_from_metrics(client: httpx.Client) -> int:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("diffmamba_process_resident_memory_bytes"):
            return int(float(line.split()[-1]))
    raise RuntimeError("the server exports no diffmamba_process_resident_memory_bytes")


def served_statuses(client: httpx.Client) -> dict[str, int]:
    """``diffmamba_requests_total`` summed over tasks: how the server itself counted /restore
    requests (499: the client went away), disconnected ones included."""
    totals: Counter[str] = Counter()
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("diffmamba_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="')[1].split('"')[0]
            totals[status] += int(float(value))
    return dict(sorted(totals.items()))


def image_bytes(rng: random.Random, size: tuple[int, int]) -> tuple[bytes, str]:
    h, w = size
    fmt = rng.choice(["PNG", "PNG", "JPEG", "WEBP"])
    channels = rng.choice([3, 3, 1] + ([4] if fmt != "JPEG" else []))
    shape = (h, w) if channels == 1 else (h, w, channels)
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue(), f"image/{fmt.lower()}"


@dataclass
class Tally:
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, scenario: str, status: int | str) -> None:
        with self.lock:
            self.statuses[scenario, str(status)] += 1


class Soak:
    def __init__(self, url: str, tasks: list[dict[str, Any]], tally: Tally, seed: int) -> None:
        self.url, self.tasks, self.tally, self.seed = url, tasks, tally, seed
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.local = threading.local()

    @property
    def http(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.url, timeout=300)
        return self.local.client

    def params(self, rng: random.Random, task: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"task": task["task"], "seed": rng.randrange(1000)}
        if not task["steps_ignored"]:
            params["steps"] = rng.choice([1, 2, 4])
        if rng.random() < 0.2:
            params["format"] = rng.choice(["png", "jpeg", "webp"])
        return params

    def run(self, index: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + index)
        scenario = rng.choices([m[0] for m in MIX], weights=[m[1] for m in MIX])[0]
        task = rng.choice(self.tasks)
        getattr(self, f"_{scenario}")(rng, task, scenario)

    def _restore(self, rng: random.Random, task: dict, scenario: str,
                 size: tuple[int, int] | None = None) -> None:
        body, media = image_bytes(rng, size or rng.choice(SIZES))
        r = self.http.post("/restore", params=self.params(rng, task), content=body,
                           headers={"Content-Type": media})
        self.tally.add(scenario, r.status_code)

    def _restore_multipart(self, rng: random.Random, task: dict, scenario: str) -> None:
        body, media = image_bytes(rng, rng.choice(SIZES))
        r = self.http.post("/restore", params=self.params(rng, task),
                           files={"file": ("in", body, media)})
        self.tally.add(scenario, r.status_code)

    def _restore_large(self, rng: random.Random, task: dict, scenario: str) -> None:
        self._restore(rng, task, scenario, LARGE)

    def _submit(self, rng: random.Random, task: dict, scenario: str,
                prefer: bool = False) -> str | None:
        body, media = image_bytes(rng, rng.choice(SIZES))
        headers = {"Content-Type": media, **({"Prefer": "respond-async"} if prefer else {})}
        r = self.http.post("/restore" if prefer else "/v1/jobs",
                           params=self.params(rng, task), content=body, headers=headers)
        self.tally.add(f"{scenario}:submit", r.status_code)
        return r.json()["id"] if r.status_code == 202 else None

    def _finish(self, job_id: str, scenario: str) -> None:
        while True:
            r = self.http.get(f"/v1/jobs/{job_id}")
            if r.status_code != 200 or r.json()["state"] in ("succeeded", "failed", "cancelled"):
                self.tally.add(f"{scenario}:status", r.status_code)
                break
            time.sleep(0.1)
        r = self.http.get(f"/v1/jobs/{job_id}/result")
        self.tally.add(f"{scenario}:result", r.status_code)

    def _job(self, rng: random.Random, task: dict, scenario: str) -> None:
        job_id = self._submit(rng, task, scenario)
        if job_id is not None:
            self._finish(job_id, scenario)

    def _restore_async(self, rng: random.Random, task: dict, scenario: str) -> None:
        job_id = self._submit(rng, task, scenario, prefer=True)
        if job_id is not None:
            self._finish(job_id, scenario)

    def _job_events(self, rng: random.Random, task: dict, scenario: str) -> None:
        job_id = self._submit(rng, task, scenario)
        if job_id is None:
            return
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events") as r:
            for _ in r.iter_lines():
                pass  # to the end: the stream closes after the final state
            self.tally.add(f"{scenario}:events", r.status_code)
        r = self.http.get(f"/v1/jobs/{job_id}/result")
        self.tally.add(f"{scenario}:result", r.status_code)

    def _job_cancel(self, rng: random.Random, task: dict, scenario: str) -> None:
        job_id = self._submit(rng, task, scenario)
        if job_id is not None:
            time.sleep(rng.choice([0.0, 0.05, 0.3]))
            self.tally.add(f"{scenario}:delete", self.http.delete(f"/v1/jobs/{job_id}").status_code)

    def _bad_input(self, rng: random.Random, task: dict, scenario: str) -> None:
        good, media = image_bytes(rng, (16, 16))
        params = self.params(rng, task)
        kind = rng.choice(["garbage", "truncated", "empty", "gif", "text", "unknown_task",
                           "bad_steps", "bad_tile", "too_large", "multipart_no_file",
                           "bad_crc"])
        headers = {"Content-Type": media}
        if kind == "garbage":
            body = rng.randbytes(rng.randrange(1, 4096))
        elif kind == "truncated":
            body = good[: len(good) // 2]
        elif kind == "empty":
            body = b""
        elif kind == "gif":
            buf = io.BytesIO()
            Image.new("RGB", (8, 8)).save(buf, format="GIF")
            body, headers = buf.getvalue(), {"Content-Type": "image/gif"}
        elif kind == "text":
            body, headers = b"hello", {"Content-Type": "text/plain"}
        elif kind == "unknown_task":
            body, params = good, {**params, "task": "dehaze"}
        elif kind == "bad_steps":
            body, params = good, {**params, "steps": 0}
        elif kind == "bad_tile":
            body, params = good, {**params, "tile": 12}
        elif kind == "too_large":
            body = b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD)
        elif kind == "bad_crc":
            png, _ = image_bytes(random.Random(1), (16, 16))
            body = png[:-5] + bytes([png[-5] ^ 1]) + png[-4:]  # IEND's CRC
        else:
            r = self.http.post("/restore", params=params, files={"image": ("x", good, media)})
            self.tally.add(f"{scenario}:{kind}", r.status_code)
            return
        r = self.http.post("/restore", params=params, content=body, headers=headers)
        self.tally.add(f"{scenario}:{kind}", r.status_code)

    def _raw_request(self, params: dict[str, Any], body: bytes, media: str) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=30)
        query = "&".join(f"{k}={v}" for k, v in params.items())
        sock.sendall(f"POST /restore?{query} HTTP/1.1\r\nHost: {self.host}\r\n"
                     f"Content-Type: {media}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        return sock

    def _disconnect_upload(self, rng: random.Random, task: dict, scenario: str) -> None:
        body, media = image_bytes(rng, rng.choice(SIZES))
        sock = self._raw_request(self.params(rng, task), body, media)
        sock.sendall(body[: rng.randrange(1, len(body))])
        time.sleep(rng.choice([0.0, 0.05, 0.2]))
        sock.close()
        self.tally.add(scenario, "closed")

    def _disconnect_compute(self, rng: random.Random, task: dict, scenario: str) -> None:
        body, media = image_bytes(rng, rng.choice([LARGE, (128, 96), (96, 128)]))
        sock = self._raw_request(self.params(rng, task), body, media)
        sock.sendall(body)
        time.sleep(rng.uniform(0.05, 0.5))
        sock.close()
        self.tally.add(scenario, "closed")

    def _probe(self, rng: random.Random, task: dict, scenario: str) -> None:
        path = rng.choice(["/healthz", "/readyz", "/v1/tasks", "/metrics", "/openapi.json"])
        self.tally.add(f"{scenario}:{path}", self.http.get(path).status_code)


def start_server(models: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DIFFMAMBA_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)}
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--models", str(models), "--log-level", "warning"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def soak(url: str, pid: int | None, requests: int, concurrency: int, warmup: int,
         seed: int) -> dict[str, Any]:
    probe = httpx.Client(base_url=url, timeout=30)
    tasks = probe.get("/v1/tasks").json()["tasks"]
    tally = Tally()
    runner = Soak(url, tasks, tally, seed)
    samples: list[tuple[int, int]] = []  # (requests done, rss)
    stop = threading.Event()

    def rss() -> int:
        return rss_of(pid) if pid is not None else rss_from_metrics(probe)

    def sample() -> None:
        while not stop.wait(0.25):
            samples.append((tally.done, rss()))

    counter = iter(range(requests))
    counter_lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        while True:
            with counter_lock:
                index = next(counter, None)
            if index is None:
                return
            try:
                runner.run(index)
            except Exception as exc:  # a client-side failure is a finding, not a crash
                errors.append(f"request {index}: {type(exc).__name__}: {exc}")
                tally.add("client_error", type(exc).__name__)
            with tally.lock:
                tally.done += 1

    samples.append((0, rss()))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    time.sleep(2.0)  # jobs and cancelled work wind down
    stop.set()
    sampler.join()
    samples.append((requests, rss()))
    counted = served_statuses(probe)

    window = max(1, min(100, warmup // 5))

    def peak(first: int, last: int) -> int:
        inside = [r for done, r in samples if first <= done <= last]
        return max(inside) if inside else 0

    at_warmup = peak(warmup - window, warmup)
    at_end = peak(requests - window, requests)
    statuses = sorted(tally.statuses.items())
    return {
        "requests": requests, "concurrency": concurrency, "seconds": round(elapsed, 1),
        "rss_start_mb": round(samples[0][1] / 2**20, 1),
        "rss_at_warmup_mb": round(at_warmup / 2**20, 1), "warmup": warmup,
        "rss_end_mb": round(at_end / 2**20, 1),
        "rss_max_mb": round(max(r for _, r in samples) / 2**20, 1),
        "rss_growth_pct": round(100 * (at_end - at_warmup) / at_warmup, 2) if at_warmup else None,
        "rss_series_mb": [round(peak(k - window, k) / 2**20, 1)
                          for k in range(window, requests + 1, max(window, requests // 20))],
        "server_errors": sum(n for (_, s), n in statuses if s.isdigit() and int(s) >= 500),
        "statuses": {f"{scenario} {status}": n for (scenario, status), n in statuses},
        "server_counted_restore_statuses": counted,
        "client_errors": errors[:20],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=500,
                        help="RSS growth is measured from this request on")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--url", default=None, help="a running server (else one is started)")
    parser.add_argument("--pid", type=int, default=None,
                        help="its process id, for RSS (else its /metrics gauge)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-growth", type=float, default=10.0, help="percent")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.warmup >= args.requests:
        parser.error("--warmup must be below --requests")

    process = None
    url, pid = args.url, args.pid
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-server-{port}.log"
        process = start_server(args.models, port, log)
        pid = process.pid
        print(f"server pid {pid} on {url}, log {log}", file=sys.stderr)
    try:
        wait_ready(url, process, timeout=600, poll_s=0.5)
        report = soak(url, pid, args.requests, args.concurrency, args.warmup, args.seed)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    growth = report["rss_growth_pct"]
    failed = report["server_errors"] > 0 or (growth is not None and growth > args.max_growth)
    print(f"{report['requests']} requests in {report['seconds']} s; RSS "
          f"{report['rss_at_warmup_mb']} MB at request {args.warmup} -> "
          f"{report['rss_end_mb']} MB at the end ({growth:+.2f} %); "
          f"5xx: {report['server_errors']}: {'FAIL' if failed else 'ok'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
