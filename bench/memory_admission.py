"""Big images through the real server under a memory budget: peak RSS, memory returned, waits.

Starts ``diffmamba serve`` in a subprocess with ``DIFFMAMBA_MAX_PIXELS`` raised and
``DIFFMAMBA_MEMORY_BUDGET_MB`` set, serving only the task(s) asked for, and restores synthetic
photo-like PNGs (smooth colour fields, hard-edged shapes, streaks and grain; made with Pillow in
a few seconds): one square image, one big one, then ``--concurrency`` square images at once. A
thread samples the server's ``/proc/PID/status`` (VmRSS, VmHWM) every 50 ms and another polls
``/healthz`` every 100 ms throughout (beside the server's own event-loop lag histogram, so a slow
probe can be told apart from a loop that could not run). Per phase it reports the status
codes, wall time, the peak RSS (the high-water mark, reset before the phase) against the
budget, the RSS before and a few seconds after (memory returned), and for the concurrent phase
which requests waited for memory: the estimate each reserves and the budget's room for
requests, both as the server computes them, and each request's ``Server-Timing`` decode
(upload + wait for memory + decode).

    python bench/memory_admission.py                     # derain, 4096², 8192×6144, 4 × 4096²
    python bench/memory_admission.py --quick             # 1024², 2048×1536, 4 × 1024²
    python bench/memory_admission.py --one 2048x1536 --big 3072x3072 --budget-mb 2200
    python bench/memory_admission.py --task derain-diffmamba --big-task derain --steps 4 --quick

The budget must hold the server's baseline (its RSS after loading plus each task's largest
network pass, logged at start-up and printed here) and the largest request's estimate, or that
request gets 413 ``too_large_for_memory``; the concurrent phase shows waiting when
``--concurrency`` requests' estimates exceed what is left.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from server_ready import wait_ready

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 2**20
SETTLE_S = 3.0  # after a phase: the server returns freed memory (malloc_trim) off the loop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- images


def photo_like(height: int, width: int, seed: int) -> bytes:
    """A PNG that compresses and restores like a photograph: smooth colour fields (a small
    random image upscaled), hard-edged shapes, thin bright streaks and fine grain."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    scale = max(height, width)
    for _ in range(60):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(scale // 80, scale // 12))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    draw = ImageDraw.Draw(image)
    for _ in range(max(200, height * width // 20_000)):  # rain-like streaks
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        length = int(rng.integers(10, 40))
        draw.line((x, y, x + length // 4, y + length), fill=(225, 225, 230), width=1)
    pixels = np.asarray(image, dtype=np.uint8).copy()
    grain = rng.integers(-6, 7, size=pixels.shape[:2], dtype=np.int16)[..., None]
    pixels = np.clip(pixels.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


# ---------------------------------------------------------------------- the server's process


def _status_kb(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) * 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def reset_hwm(pid: int) -> bool:
    """Lower the server's VmHWM to its current RSS (Linux clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler(threading.Thread):
    """VmRSS and VmHWM of ``pid`` every ``period`` seconds; ``peak()`` over a time window."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            status = _status_kb(self.pid)
            if status:
                self.samples.append((time.monotonic(), status["VmRSS"], status["VmHWM"]))
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(2)

    def peak(self, start: float, end: float) -> tuple[int, int]:
        """(max sampled VmRSS, max VmHWM) between ``start`` and ``end``."""
        inside = [(rss, hwm) for t, rss, hwm in self.samples if start <= t <= end]
        if not inside:
            return 0, 0
        return max(r for r, _ in inside), max(h for _, h in inside)


class HealthPoller(threading.Thread):
    """GET /healthz every ``period`` seconds; latencies in seconds (a failure counts as inf)."""

    def __init__(self, url: str, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.url, self.period = url, period
        self.latencies: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._halt.is_set():
                start = time.perf_counter()
                try:
                    ok = http.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - start
                self.latencies.append((time.monotonic(), elapsed if ok else math.inf))
                self._halt.wait(max(0.0, self.period - elapsed))

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(35)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# ---------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    size: tuple[int, int]  # (height, width)
    count: int
    statuses: list[int] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    tiles: list[int] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    hwm_peak: int = 0
    rss_after: int = 0
    health: list[float] = field(default_factory=list)
    estimate: int = 0
    errors: list[str] = field(default_factory=list)
    # the server's own view: its event-loop lag histogram over the phase (service.api.loop_lag)
    loop_lag_p99: float = math.nan  # the upper bound of the bucket holding the 99th percentile
    loop_lag_n: int = 0


LAG_BUCKET = re.compile(r'^diffmamba_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([\d.e+]+)$',
                        re.M)


def loop_lag_buckets(url: str) -> dict[float, float]:
    """The server's cumulative event-loop lag histogram, {upper bound: count}."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    return {float(le): float(n) for le, n in LAG_BUCKET.findall(text)}


def lag_percentile(before: dict[float, float], after: dict[float, float],
                   q: float) -> tuple[float, int]:
    """(upper bound of the bucket holding the q-th percentile, samples) between two scrapes."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta.get(math.inf, 0.0)
    if total <= 0:
        return math.nan, 0
    for le, cumulative in delta.items():
        if cumulative >= q / 100 * total:
            return le, int(total)
    return math.inf, int(total)


def _server_timing(header: str, name: str) -> float:
    match = re.search(rf"{name};dur=([\d.]+)", header or "")
    return float(match.group(1)) / 1e3 if match else math.nan


def _post(url: str, task: str, steps: int, body: bytes, seed: int,
          timeout: float) -> tuple[int, float, httpx.Response]:
    start = time.perf_counter()
    with httpx.Client(timeout=timeout) as http:
        r = http.post(f"{url}/restore", params={"task": task, "steps": steps, "seed": seed},
                      content=body, headers={"Content-Type": "image/png"})
    return r.status_code, time.perf_counter() - start, r


def run_phase(phase: Phase, url: str, pid: int, task: str, steps: int, body: bytes,
              sampler: RssSampler, health: HealthPoller, timeout: float,
              log: Callable[[str], None]) -> Phase:
    phase.rss_before = _status_kb(pid).get("VmRSS", 0)
    lag_before = loop_lag_buckets(url)
    reset_hwm(pid)
    start = time.monotonic()
    results: list[tuple[int, float, httpx.Response] | BaseException | None] = [None] * phase.count

    def one(i: int) -> None:
        try:
            results[i] = _post(url, task, steps, body, seed=i, timeout=timeout)
        except BaseException as exc:  # reported, not raised: the other requests go on
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(phase.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.monotonic()
    phase.loop_lag_p99, phase.loop_lag_n = lag_percentile(lag_before, loop_lag_buckets(url), 99)
    time.sleep(0.2)  # a last sample past the response
    phase.rss_peak, phase.hwm_peak = sampler.peak(start, time.monotonic())
    phase.hwm_peak = max(phase.hwm_peak, _status_kb(pid).get("VmHWM", 0))
    time.sleep(SETTLE_S)
    phase.rss_after = _status_kb(pid).get("VmRSS", 0)
    phase.health = [lat for t, lat in health.latencies if start <= t <= end]
    for result in results:
        if result is None or isinstance(result, BaseException):
            phase.statuses.append(0)
            phase.errors.append(repr(result))
            continue
        status, wall, response = result
        phase.statuses.append(status)
        phase.walls.append(wall)
        phase.decode_s.append(_server_timing(response.headers.get("server-timing", ""),
                                             "decode"))
        phase.tiles.append(int(response.headers.get("x-tiles", "0") or 0))
        if status != 200:
            phase.errors.append(response.text[:300])
        else:
            with Image.open(io.BytesIO(response.content)) as out:
                if out.size != (phase.size[1], phase.size[0]):
                    phase.errors.append(f"output {out.size}, expected {phase.size[::-1]}")
    log(f"{phase.name}: {phase.statuses} in {max(phase.walls or [0]):.0f} s, peak RSS "
        f"{phase.hwm_peak / MB:.0f} MB")
    return phase


def _estimate(task_path: Path, tile: int, overlap: int, height: int, width: int,
              body_bytes: int) -> int:
    """The bytes the server reserves for this upload (its own estimate function)."""
    from service.models import load_checkpoint
    from service.runtime.pipeline import estimate_for
    from service.settings import Settings

    kind = load_checkpoint(task_path).kind
    settings = Settings(device="cpu", tile_size=tile, tile_overlap=overlap)
    task = SimpleNamespace(kind=kind)
    return estimate_for(task, settings, None, height, width,  # type: ignore[arg-type]
                        body_bytes=body_bytes, output_format="PNG").peak


# ---------------------------------------------------------------------- report


def _mb(x: float) -> str:
    return f"{x / MB:,.0f}"


def table(phases: list[Phase], budget: int, available: int | None) -> str:
    rows = [
        "| phase | image | status | wall (s) | tiles | estimate / request (MB) | "
        "RSS before (MB) | peak RSS (MB) | ≤ budget | RSS after (MB) | healthz p50 / p99 (ms) | "
        "loop lag p99 (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for p in phases:
        h, w = p.size
        image = f"{w}×{h}" if p.count == 1 else f"{p.count} × {w}×{h}"
        codes = ", ".join(str(s) for s in p.statuses)
        walls = (f"{p.walls[0]:.0f}" if len(p.walls) == 1 else
                 f"{min(p.walls):.0f}–{max(p.walls):.0f}") if p.walls else "–"
        finite = [x for x in p.health if math.isfinite(x)]
        lost = len(p.health) - len(finite)
        health = (f"{_percentile(finite, 50) * 1e3:.0f} / {_percentile(finite, 99) * 1e3:.0f}"
                  + (f" ({lost} failed)" if lost else "") + f" (n={len(p.health)})")
        peak = max(p.rss_peak, p.hwm_peak)
        lag = (f"≤ {p.loop_lag_p99 * 1e3:g} (n={p.loop_lag_n})" if p.loop_lag_n else "–")
        rows.append(
            f"| {p.name} | {image} | {codes} | {walls} | {p.tiles[0] if p.tiles else '–'} | "
            f"{_mb(p.estimate)} | {_mb(p.rss_before)} | {_mb(peak)} | "
            f"{'yes' if peak <= budget else '**no**'} | {_mb(p.rss_after)} | {health} | {lag} |")
    lines = ["\n".join(rows), ""]
    concurrent = [p for p in phases if p.count > 1]
    for p in concurrent:
        fit = "?" if available is None or not p.estimate else str(
            min(p.count, available // p.estimate))
        decodes = ", ".join(f"{d:.1f}" for d in sorted(p.decode_s))
        lines.append(
            f"{p.name}: each request reserves {_mb(p.estimate)} MB of "
            f"{_mb(available) if available else '?'} MB for requests, so {fit} of {p.count} fit "
            f"at once (the others wait for memory); Server-Timing decode (upload + wait + "
            f"decode) per request, sorted: {decodes} s.")
    for p in phases:
        for err in p.errors:
            lines.append(f"{p.name} error: {err}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def compact(phase: Phase) -> dict[str, object]:
    """A phase for the JSON report: the probe latencies as counts and percentiles, not a list
    of every probe (tens of thousands in a long phase)."""
    out = dict(phase.__dict__)
    finite = [x for x in phase.health if math.isfinite(x)]
    out["health"] = {"n": len(phase.health), "failed": len(phase.health) - len(finite),
                     "p50_s": _percentile(finite, 50), "p99_s": _percentile(finite, 99),
                     "max_s": max(finite, default=math.nan)}
    return out


def _size(text: str) -> tuple[int, int]:
    """"WxH" -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 4096x3072, got {text!r}") from None
    return height, width


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024², 2048×1536, 4 × 1024²")
    parser.add_argument("--one", type=_size, default=None, help="WxH of the first phase")
    parser.add_argument("--big", type=_size, default=None, help="WxH of the big image")
    parser.add_argument("--concurrent-size", type=_size, default=None,
                        help="WxH of each concurrent request (default: --one)")
    parser.add_argument("--task", default="derain", help="task of the square and concurrent "
                        "phases (a checkpoint in --models)")
    parser.add_argument("--big-task", default=None, help="task of the big image (default: "
                        "--task)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (diffusion tasks)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--budget-mb", type=int, default=None,
                        help="DIFFMAMBA_MEMORY_BUDGET_MB (default 4096, --quick 2560)")
    parser.add_argument("--max-pixels", type=int, default=50_331_648)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--threads", type=int, default=None, help="server's CPU threads")
    parser.add_argument("--timeout-s", type=float, default=4 * 3600.0,
                        help="DIFFMAMBA_REQUEST_TIMEOUT_S and the client's timeout")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    big_task = args.big_task or args.task
    square = args.one or ((1024, 1024) if args.quick else (4096, 4096))
    big = args.big or ((1536, 2048) if args.quick else (6144, 8192))
    together = args.concurrent_size or square
    budget_mb = args.budget_mb or (2560 if args.quick else 4096)
    budget = budget_mb * MB

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    images = {size: photo_like(*size, seed=seed)
              for seed, size in enumerate(dict.fromkeys([square, big, together]))}
    log(f"images: {', '.join(f'{w}×{h} {len(b) / MB:.0f} MB' for (h, w), b in images.items())}"
        f" in {time.perf_counter() - t:.1f} s")

    with tempfile.TemporaryDirectory(prefix="memadm-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        paths = {}
        for task in {args.task, big_task}:
            src = args.models / f"{task}.safetensors"
            shutil.copy(src, models / src.name)
            paths[task] = src
            if (args.models / f"{task}.json").is_file():
                shutil.copy(args.models / f"{task}.json", models / f"{task}.json")
        port = _free_port()
        env = {**os.environ,
               "DIFFMAMBA_MAX_PIXELS": str(args.max_pixels),
               "DIFFMAMBA_MEMORY_BUDGET_MB": str(budget_mb),
               "DIFFMAMBA_MAX_UPLOAD_BYTES": str(1 << 30),
               "DIFFMAMBA_REQUEST_TIMEOUT_S": str(args.timeout_s),
               "DIFFMAMBA_TILE_SIZE": str(args.tile),
               "DIFFMAMBA_TILE_OVERLAP": str(args.overlap)}
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
               "--models", str(models), "--device", "cpu"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        server_log = Path(tmp) / "server.log"
        with server_log.open("wb") as sink:
            server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink,
                                      stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        sampler = RssSampler(server.pid)
        health = HealthPoller(url)
        phases: list[Phase] = []
        available: int | None = None
        try:
            t = time.perf_counter()
            try:
                wait_ready(url, server, timeout=900, poll_s=0.5)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}:\n{server_log.read_text()[-3000:]}") from exc
            memory_line = next((line for line in server_log.read_text().splitlines()
                                if "MB for requests" in line), "")
            log(f"server: {memory_line.strip()}")
            match = re.search(r"(-?[\d,]+) MB for requests", memory_line)
            available = int(match.group(1).replace(",", "")) * MB if match else None
            log(f"ready in {time.perf_counter() - t:.0f} s; RSS "
                f"{_status_kb(server.pid).get('VmRSS', 0) / MB:.0f} MB; budget {budget_mb} MB,"
                f" {available / MB if available else math.nan:.0f} MB for requests")
            sampler.start()
            health.start()
            time.sleep(2)
            plan = [
                (Phase(f"one {args.task}", square, 1), args.task),
                (Phase(f"big {big_task}", big, 1), big_task),
                (Phase(f"{args.concurrency} concurrent {args.task}", together, args.concurrency),
                 args.task),
            ]
            for phase, task in plan:
                h, w = phase.size
                phase.estimate = _estimate(paths[task], args.tile, args.overlap, h, w,
                                           len(images[phase.size]))
                log(f"{phase.name} {w}×{h}: estimate {phase.estimate / MB:.0f} MB")
                phases.append(run_phase(phase, url, server.pid, task, args.steps,
                                        images[phase.size], sampler, health, args.timeout_s,
                                        log))
        finally:
            server.terminate()  # first: nothing below may leave the server running
            health.stop()
            sampler.stop()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
            tail = "\n".join(line for line in server_log.read_text().splitlines()
                             if "/healthz" not in line)[-4000:]
        if any(p.errors for p in phases):
            print(tail, file=sys.stderr)

    print(f"\nbudget {budget_mb} MB (DIFFMAMBA_MEMORY_BUDGET_MB); server RSS sampled every 50 ms"
          f" and its VmHWM, reset before each phase; RSS after: {SETTLE_S:g} s after the last "
          f"response; /healthz polled every 100 ms during each phase; loop lag: the server's "
          f"diffmamba_event_loop_lag_seconds histogram over the phase\n")
    print(table(phases, budget, available))
    if args.json:
        args.json.write_text(json.dumps({
            "budget_mb": budget_mb, "available_bytes": available,
            "phases": [compact(p) for p in phases]}, indent=1, default=str))
    ok = all(s == 200 for p in phases for s in p.statuses) and all(
        max(p.rss_peak, p.hwm_peak) <= budget for p in phases)
    if phases:
        all_health = [x for p in phases for x in p.health if math.isfinite(x)]
        print(f"\n/healthz over all phases: p50 {statistics.median(all_health) * 1e3:.0f} ms,"
              f" p99 {_percentile(all_health, 99) * 1e3:.0f} ms, n={len(all_health)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
