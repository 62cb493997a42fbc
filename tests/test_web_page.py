"""The web page at ``/`` and the offline ``/docs``.

The first tests read the served files (TestClient) and the wheel; the browser tests drive
Debian's Chromium headless through Playwright against real ``diffmamba serve`` processes: one
open (progress over server-sent events) and one with API keys (progress polled).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from cli_server import serve_process
from fastapi.testclient import TestClient
from PIL import Image
from serving import FIXTURES, make_models_dir, png_bytes, started_client

from service.auth import create_key
from service.web.docs import DOCS_ASSETS
from service.web.page import STATIC_DIR

REPO = Path(__file__).resolve().parent.parent
SHIPPED_DERAIN = REPO / "models" / "derain.safetensors"
# Any absolute http(s) URL that does not point back at this machine.
EXTERNAL_URL = re.compile(r"https?://(?!(?:localhost|127\.0\.0\.1)[:/])[^\s\"'`)<>\\]+")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an identifier in CSS data: URIs, never fetched
TERMINAL = ("succeeded", "failed", "cancelled")


# --- served files -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with started_client(make_models_dir(tmp_path_factory.mktemp("web"))) as c:
        yield c


def _csp(response: httpx.Response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}


def test_page_and_its_files_are_served_without_external_urls(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert _csp(page)["script-src"] == ["'self'"]  # no inline script: the page needs none
    assert client.head("/").status_code == 200
    linked = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert {"static/app.js", "static/style.css"} <= set(linked)
    files = sorted(p.name for p in STATIC_DIR.iterdir())
    assert files == ["api.js", "app.js", "compare.js", "index.html", "style.css", "zip.js"]
    for name in files:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["cache-control"] == "no-cache"  # revalidated, not no-store
        assert EXTERNAL_URL.findall(r.text) == [], name
        imports = re.findall(r'from "([^"]+)"', r.text)
        assert all(i.startswith("./") for i in imports), (name, imports)  # no bare or CDN import
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    etag = client.get("/static/app.js").headers["etag"]
    assert client.get("/static/app.js", headers={"If-None-Match": etag}).status_code == 304
    missing = client.get("/static/nope.js")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_docs_load_only_local_files(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert EXTERNAL_URL.findall(docs.text) == []
    loaded = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert sorted(loaded) == sorted(f"/static/docs/{n}" for n in DOCS_ASSETS)
    assert "validatorUrl" in docs.text  # off: the schema's URL is never sent to swagger.io
    csp = _csp(docs)
    assert not any(s.startswith("http") for d in csp.values() for s in d), csp
    for url in loaded:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url
    css = client.get("/static/docs/swagger-ui.css").text
    assert set(EXTERNAL_URL.findall(css)) <= {SVG_NAMESPACE}
    assert "SwaggerUIBundle" in client.get("/static/docs/swagger-ui-bundle.js").text
    # only the files the page loads: not the package's demo page or its source maps
    for name in ("index.html", "swagger-initializer.js", "swagger-ui-bundle.js.map"):
        r = client.get(f"/static/docs/{name}")
        assert r.status_code == 404 and r.json()["error"] == "not_found", name
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"]


def test_wheel_ships_the_static_files(tmp_path: Path) -> None:
    """Built from a copy of the sources, as pip does for ``pip install .``."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "service", src / "service",
                    ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-c",
         "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"],
        cwd=src, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = src / "dist" / build.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC_DIR.iterdir():
        assert f"service/web/static/{path.name}" in names, path.name


# --- a real browser -----------------------------------------------------------------------

def _chromium() -> str:
    """Debian's Chromium, installed with apt when missing and running as root."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no chromium on PATH, and not root to `apt-get install chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return found


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop: not past here
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra has playwright")
    executable = _chromium()
    with sync_api.sync_playwright() as p:
        # --no-sandbox: Chromium's sandbox cannot start as root (CI runs as root)
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class PageWatch:
    """A page plus what it did: requests and console lines. Conditions are polled with
    ``evaluate`` (run by the DevTools protocol, outside the page's CSP) because Playwright's
    ``wait_for_function`` evaluates a string, which the page's CSP rightly refuses."""

    def __init__(self, context: object) -> None:
        self.page = context.new_page()  # type: ignore[attr-defined]
        self.requests: list[object] = []
        self.console: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r))
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def wait(self, expression: str, timeout_s: float = 60.0) -> object:
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.page.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout_s} s: {expression}\n"
                                     f"console: {self.console}")
            time.sleep(0.02)

    def cards(self) -> list[dict[str, str]]:
        return self.page.evaluate("""() => [...document.querySelectorAll('.card')].map(c => ({
            name: c.querySelector('.name').textContent, state: c.dataset.state || '',
            job: c.dataset.jobId || '', meta: c.querySelector('.meta').textContent,
            error: c.querySelector('.error').hidden ? '' : c.querySelector('.error').textContent,
        }))""")

    def settle(self, count: int) -> list[dict[str, str]]:
        self.wait(f"""(() => {{ const c = [...document.querySelectorAll('.card')];
            return c.length === {count} && c.every(e => {list(TERMINAL)}.includes(e.dataset.state));
        }})()""")
        return self.cards()

    def check_clean(self, base: str) -> None:
        """Nothing fetched from anywhere else, no CSP refusal, no script error."""
        outside = [r.url for r in self.requests  # type: ignore[attr-defined]
                   if not r.url.startswith((base, "blob:", "data:"))]
        assert outside == []
        assert not [line for line in self.console
                    if "Content Security Policy" in line or line.startswith("pageerror")]


def _download(watch: PageWatch, selector: str) -> bytes:
    with watch.page.expect_download() as info:
        watch.page.click(selector)
    path = info.value.path()
    return Path(path).read_bytes()


def _drop(page: object, path: Path) -> None:
    """A real ``drop`` event carrying the file, as dragging it from a file manager sends."""
    data = page.evaluate_handle(  # type: ignore[attr-defined]
        """([name, bytes]) => { const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'}));
            return dt; }""", [path.name, list(path.read_bytes())])
    drop = page.locator("#drop")  # type: ignore[attr-defined]
    drop.dispatch_event("dragover", {"dataTransfer": data})
    assert drop.evaluate("zone => zone.classList.contains('over')")  # highlighted
    drop.dispatch_event("drop", {"dataTransfer": data})


def _card(name: str) -> str:
    return f".card:has(.name:text-is('{name}'))"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two rainy photos made by the evaluation's degradation, a gradient, a small image for
    ×4 and a file that only claims to be a PNG."""
    pytest.importorskip("skimage")
    from service.evaluation.pairs import synthetic_pairs

    root = tmp_path_factory.mktemp("inputs")
    paths: dict[str, Path] = {}
    for i, pair in enumerate(synthetic_pairs("derain", seed=0, size=128, limit=2)):
        rgb = (np.clip(pair.degraded, 0, 1) * 255).round().astype(np.uint8)
        paths[f"rainy{i}"] = root / f"rainy-{i}.png"
        paths[f"rainy{i}"].write_bytes(png_bytes(rgb))
    y, x = np.mgrid[0:40, 0:48]
    gradient = np.stack([x * 5, y * 6, (x + y) * 3], -1).astype(np.uint8)
    paths["gradient"] = root / "gradient.png"
    paths["gradient"].write_bytes(png_bytes(gradient))
    paths["large"] = root / "large.png"
    paths["large"].write_bytes(png_bytes(np.resize(gradient, (256, 256, 3))))
    paths["small"] = root / "small.png"
    paths["small"].write_bytes(png_bytes(gradient[:16, :20]))
    paths["broken"] = root / "broken.png"
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\nnot an image after all")
    return paths


class Servers:
    """Two ``diffmamba serve`` processes, started in the background: their URLs wait for them,
    so the inputs are made and the browser starts meanwhile."""

    def __init__(self, open_start: Future[str], keyed_start: Future[str], key: str) -> None:
        self._open, self._keyed, self.key = open_start, keyed_start, key

    @property
    def open(self) -> str:
        """derain: the shipped VmambaIR checkpoint (a real restoration for the screenshot);
        denoise: a tiny diffusion fixture (steps, seed, progress); sr: a tiny ×4 fixture."""
        return self._open.result()

    @property
    def keyed(self) -> str:
        """With a keys file holding :attr:`key`; denoise only."""
        return self._keyed.result()


def _models_dir(root: Path, files: dict[str, Path]) -> Path:
    models = root / "models"
    models.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, models / name)
    return models


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    if not SHIPPED_DERAIN.is_file():
        pytest.skip(f"{SHIPPED_DERAIN} is not in this checkout")
    root = tmp_path_factory.mktemp("servers")
    tiny_diffusion = FIXTURES / "diffmamba" / "tiny_biasfree_checkpoint.pth"
    open_models = _models_dir(root / "open", {
        "derain.safetensors": SHIPPED_DERAIN, "derain.json": SHIPPED_DERAIN.with_suffix(".json"),
        "denoise.pth": tiny_diffusion, "sr.pth": FIXTURES / "vmambair_sr" / "tiny_checkpoint.pth",
    })
    keyed_models = _models_dir(root / "keyed", {"denoise.pth": tiny_diffusion})
    key, _ = create_key(root / "keys.json", "browser")
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        starts = [
            pool.submit(stack.enter_context, serve_process(open_models, DIFFMAMBA_WARMUP="false")),
            pool.submit(stack.enter_context, serve_process(
                keyed_models, DIFFMAMBA_WARMUP="false",
                DIFFMAMBA_API_KEYS_FILE=str(root / "keys.json"))),
        ]
        yield Servers(*starts, key)


def test_page_restores_compares_and_downloads(servers: Servers, inputs: dict[str, Path],
                                              browser: object, tmp_path: Path) -> None:
    base = servers.open
    context = browser.new_context(accept_downloads=True,  # type: ignore[attr-defined]
                                  viewport={"width": 1200, "height": 900})
    watch = PageWatch(context)
    page = watch.page
    page.goto(f"{base}/")
    watch.wait("document.querySelector('#task').options.length === 3")
    options = page.eval_on_selector_all("#task option", "o => o.map(e => e.textContent)")
    assert options == ["denoise — diffusion", "derain — single pass", "sr — super resolution ×4"]

    # A diffusion task: steps and seed are offered; progress arrives over server-sent events.
    page.select_option("#task", "denoise")
    assert page.is_visible("#steps") and page.is_visible("#seed")
    assert "4 steps by default" in page.text_content("#task-info")
    page.fill("#steps", "24")
    page.fill("#seed", "7")
    page.set_input_files("#files", str(inputs["gradient"]))
    watch.wait("[...document.querySelectorAll('.card .bar')]"
               ".some(b => b.value > 0 && b.value < 1)")
    # 24 steps visit 25 timesteps: one round each over the image's one tile
    assert re.match(r"round \d+/25 · \d+/25 network passes · 1 tile",
                    page.text_content(".card .progress-text") or "")
    [denoised] = watch.settle(1)
    assert denoised["state"] == "succeeded", denoised
    assert denoised["meta"].startswith("seed 7 · 24 steps · ") and "48×40 → 48×40" in \
        denoised["meta"]
    assert any(r.url.endswith(f"/v1/jobs/{denoised['job']}/events") for r in watch.requests)
    data = _download(watch, f"{_card('gradient.png → denoise')} .download")
    assert data == httpx.get(f"{base}/v1/jobs/{denoised['job']}/result").content
    assert Image.open(io.BytesIO(data)).size == (48, 40)

    # ×4: no steps or seed; the input is shown stretched over the 4× output.
    page.select_option("#task", "sr")
    assert not page.is_visible("#steps")
    page.set_input_files("#files", str(inputs["small"]))
    sr = watch.settle(2)[0]
    assert sr["state"] == "succeeded" and "one pass" in sr["meta"] and "20×16 → 80×64" in sr["meta"]
    card = _card("small.png → sr")
    boxes = [page.locator(f"{card} .{layer}").bounding_box() for layer in ("before", "after")]
    assert boxes[0] == boxes[1] and boxes[0]["width"] >= 80  # type: ignore[index]
    upscaled = Image.open(io.BytesIO(_download(watch, f"{card} .download")))
    assert upscaled.size == (80, 64) and upscaled.format == "PNG"

    # Several at once, one of them broken: the JSON error's detail is shown on its card.
    page.select_option("#task", "derain")
    page.set_input_files("#files", [str(inputs["rainy0"]), str(inputs["rainy1"]),
                                    str(inputs["broken"])])
    cards = {c["name"]: c for c in watch.settle(5)}
    broken = cards["broken.png → derain"]
    assert broken["state"] == "failed" and "(invalid_image, HTTP 400)" in broken["error"]
    assert all(cards[f"rainy-{i}.png → derain"]["state"] == "succeeded" for i in (0, 1))

    # Download all: the page's own zip writer; CRC-32 of the standard check string first.
    crc = page.evaluate("import('/static/zip.js').then(m => m.crc32("
                        "new TextEncoder().encode('123456789')))")
    assert crc == 0xCBF43926
    archive = zipfile.ZipFile(io.BytesIO(_download(watch, "#zip-all")))
    assert archive.testzip() is None  # every entry's CRC matches
    done = [c for c in cards.values() if c["state"] == "succeeded"]
    expected = {re.sub(r"\.png → (\w+)$", r".\1.png", c["name"]): c["job"] for c in done}
    assert sorted(archive.namelist()) == sorted(expected)
    for name, job in expected.items():
        assert archive.read(name) == httpx.get(f"{base}/v1/jobs/{job}/result").content, name
    assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())

    # The comparison slider moves the split; then the screenshot for the README.
    slider = page.locator(f"{_card('rainy-0.png → derain')} .slider")
    box = slider.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + box["height"] / 2)
    split = slider.evaluate("s => s.closest('.compare').style.getPropertyValue('--split')")
    assert 25 <= float(split.rstrip("%")) <= 35, split
    page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + box["height"] / 2)
    page.screenshot(path=str(tmp_path / "web-page-full.png"), full_page=True)
    shot = tmp_path / "web-page.png"
    page.screenshot(path=str(shot))  # the first screen: controls and the latest results
    assert Image.open(shot).size == (1200, 900)
    if os.environ.get("DIFFMAMBA_WRITE_SCREENSHOT"):  # the README's picture
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "web-page.png")
    watch.check_clean(base)

    # /docs: Swagger UI renders from local files only.
    docs = PageWatch(context)
    docs.page.goto(f"{base}/docs")
    docs.page.wait_for_selector(".opblock", timeout=30_000)
    assert docs.page.locator(".opblock-summary-path", has_text="/v1/jobs").count() > 0
    docs.page.screenshot(path=str(tmp_path / "docs.png"))
    docs.check_clean(base)
    context.close()  # type: ignore[attr-defined]


def test_page_with_api_keys_polls_with_the_key(servers: Servers, inputs: dict[str, Path],
                                               browser: object) -> None:
    base, key = servers.keyed, servers.key
    context = browser.new_context()  # type: ignore[attr-defined]
    watch = PageWatch(context)
    page = watch.page
    page.goto(f"{base}/")  # the page itself needs no key
    status = watch.wait("document.querySelector('#status').textContent")
    assert "needs an API key" in status  # type: ignore[operator]
    assert page.is_visible("#api-key")  # the key box opened itself
    keyed_from = len(watch.requests)
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    watch.wait("document.querySelector('#task').value === 'denoise'")
    assert page.evaluate("sessionStorage.getItem('diffmamba.apiKey')") == key
    page.fill("#steps", "3")
    _drop(page, inputs["gradient"])
    [card] = watch.settle(1)
    assert card["state"] == "succeeded" and "3 steps" in card["meta"], card
    job_urls = [r for r in watch.requests[keyed_from:]
                if "/v1/" in r.url]  # type: ignore[attr-defined]
    assert job_urls and all(r.headers.get("x-api-key") == key for r in job_urls)
    assert any(r.url.endswith(f"/v1/jobs/{card['job']}") for r in job_urls)  # polled
    assert not any(r.url.endswith("/events") for r in job_urls)  # EventSource sends no key
    assert page.evaluate("document.querySelector('.card .after').naturalWidth") == 48

    # Cancel: a long job (50 steps on a 256² image) is cancelled as soon as it has an id.
    page.fill("#steps", "50")
    _drop(page, inputs["large"])
    watch.wait("document.querySelector('.card').dataset.jobId")
    page.click(".card .cancel")
    cancelled = watch.settle(2)[0]
    assert cancelled["state"] == "cancelled", cancelled
    assert cancelled["error"] == "Job cancelled: cancelled by request (cancelled)"
    assert any(r.method == "DELETE" and r.headers.get("x-api-key") == key
               for r in watch.requests)  # type: ignore[attr-defined]

    # A reload keeps the key for this tab; a wrong key is refused with the server's words.
    page.reload()
    watch.wait("document.querySelector('#task').value === 'denoise'")
    page.fill("#api-key", "not-a-key")
    page.press("#api-key", "Enter")
    refused = watch.wait("(t => t.includes('API key') && t)"
                         "(document.querySelector('#status').textContent)")
    assert "unknown or revoked" in refused  # type: ignore[operator]
    watch.check_clean(base)
    context.close()  # type: ignore[attr-defined]
