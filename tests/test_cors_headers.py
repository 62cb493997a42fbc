"""CORS preflights and headers, security headers per kind of response, request-id hygiene."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from serving import make_models_dir, png_bytes, random_image, started_client, wait_ready

from service.auth import create_key
from service.settings import Settings

APP_ORIGIN = "https://app.example.com"
PNG = {"Content-Type": "image/png"}
GOOD = png_bytes(random_image(16, 16))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models_dir(tmp_path_factory.mktemp("cors"))


@pytest.fixture(scope="module")
def client(models: Path) -> Iterator[TestClient]:
    with started_client(models, cors_allow_origins=[APP_ORIGIN]) as c:
        wait_ready(c)
        yield c


def _preflight(c: TestClient, origin: str, method: str = "POST",
               headers: str | None = "content-type, authorization") -> object:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    return c.options("/restore", headers=h)


def test_preflight_allowed(client: TestClient) -> None:
    r = _preflight(client, APP_ORIGIN)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "content-type, authorization"
    assert int(r.headers["access-control-max-age"]) > 0
    assert "Origin" in r.headers["vary"]


@pytest.mark.parametrize(("origin", "method", "headers", "named"), [
    ("https://evil.example", "POST", "content-type", "origin"),
    (APP_ORIGIN, "PUT", "content-type", "method"),
    (APP_ORIGIN, "POST", "content-type, x-custom-thing", "x-custom-thing"),
])
def test_preflight_denied_names_the_reason(client: TestClient, origin: str, method: str,
                                           headers: str, named: str) -> None:
    r = _preflight(client, origin, method, headers)
    assert r.status_code == 403 and r.json()["error"] == "cors_denied"
    assert named in r.json()["detail"]
    assert "access-control-allow-origin" not in r.headers


def test_actual_request_gets_cors_headers_only_for_allowed_origins(client: TestClient) -> None:
    r = client.post("/restore", params={"task": "derain", "steps": 1}, content=GOOD,
                    headers={**PNG, "Origin": APP_ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "X-Request-ID" in r.headers["access-control-expose-headers"]
    other = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_without_origins_preflight_is_403_not_405(models: Path) -> None:
    with started_client(models) as c:
        r = _preflight(c, APP_ORIGIN)
        assert r.status_code == 403 and r.json()["error"] == "cors_denied"
        assert "DIFFMAMBA_CORS_ALLOW_ORIGINS" in r.json()["detail"]
        assert "access-control-allow-origin" not in c.get(
            "/healthz", headers={"Origin": APP_ORIGIN}).headers


def test_wildcard_origin(models: Path) -> None:
    with started_client(models, cors_allow_origins=["*"]) as c:
        r = _preflight(c, "https://anywhere.example")
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers


def test_preflight_needs_no_key_and_refusals_carry_cors(models: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    create_key(keys, "web")
    with started_client(models, api_keys_file=keys, cors_allow_origins=[APP_ORIGIN]) as c:
        assert _preflight(c, APP_ORIGIN).status_code == 204
        refused = c.get("/v1/tasks", headers={"Origin": APP_ORIGIN})
        assert refused.status_code == 401  # and the page can read why:
        assert refused.headers["access-control-allow-origin"] == APP_ORIGIN


def test_origin_setting_is_validated() -> None:
    with pytest.raises(ValidationError, match="scheme://host"):
        Settings(cors_allow_origins=["app.example.com"])


# ------------------------------------------------------------------------------ security headers


def _csp(r: object) -> dict[str, list[str]]:
    policy = r.headers["content-security-policy"]  # type: ignore[attr-defined]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}


def test_api_answers_carry_strict_headers(client: TestClient) -> None:
    ok = client.post("/restore", params={"task": "derain", "steps": 1}, content=GOOD,
                     headers=PNG)
    error = client.post("/restore", params={"task": "nope"}, content=GOOD, headers=PNG)
    probe = client.get("/readyz")
    for r in (ok, error, probe):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["referrer-policy"] == "no-referrer"
        csp = _csp(r)
        assert csp["default-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert ok.headers["content-type"] == "image/png" and error.status_code == 404


def test_docs_page_policy_allows_what_it_loads(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = _csp(r)
    assert csp["frame-ancestors"] == ["'none'"]
    scripts = re.findall(r'<script src="([^"]+)"', r.text)
    styles = re.findall(r'<link[^>]+href="([^"]+\.css)"', r.text)
    assert scripts and styles
    # served by this origin (service.web.docs), so 'self' covers them and no CDN is allowed
    assert all(url.startswith("/") and not url.startswith("//") for url in scripts + styles)
    assert csp["script-src"] == ["'self'", "'unsafe-inline'"]  # its inline start
    assert csp["style-src"] == ["'self'", "'unsafe-inline'"]
    assert "<script>" in r.text


def test_other_pages_get_a_same_origin_policy(client: TestClient) -> None:
    from fastapi.responses import HTMLResponse

    async def page() -> HTMLResponse:
        return HTMLResponse("<html><script src='/app.js'></script></html>")

    client.app.add_api_route("/test-page", page)
    csp = _csp(client.get("/test-page"))
    assert csp["script-src"] == ["'self'"] and csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]


# ---------------------------------------------------------------------------------- request id


@pytest.mark.parametrize("given", ["<script>alert(1)</script>", "a" * 65, "id with spaces",
                                   "quote\"d", "ünïcode"])
def test_unsafe_request_ids_are_replaced(client: TestClient, given: str) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": given.encode()})
    rid = r.headers["x-request-id"]
    assert rid != given and re.fullmatch(r"[0-9a-f]{32}", rid)


def test_valid_request_id_is_echoed_once_everywhere(client: TestClient) -> None:
    rid = "client.trace-42_A"
    ok = client.post("/restore", params={"task": "derain", "steps": 1}, content=GOOD,
                     headers={**PNG, "X-Request-ID": rid})
    error = client.post("/restore", params={"task": "derain"}, content=b"junk",
                        headers={**PNG, "X-Request-ID": rid})
    for r in (ok, error):
        assert r.headers.get_list("x-request-id") == [rid]
    assert error.status_code == 400


def test_generated_request_id_matches_between_layers(client: TestClient) -> None:
    r = client.post("/restore", params={"task": "derain", "steps": 1}, content=GOOD, headers=PNG)
    assert len(r.headers.get_list("x-request-id")) == 1
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
