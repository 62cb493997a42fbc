"""API keys: the keys file and CLI, 401/403/429, live reload, limits, probes without a key."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from serving import LiveServer, make_models_dir, png_bytes, random_image, started_client

from service.auth import KeyFileError, KeyRing, create_key, hash_key, read_keys_file, revoke_key
from service.cli import build_parser, main

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models_dir(tmp_path_factory.mktemp("auth"))


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    return tmp_path / "api-keys.json"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def client(models: Path, keys: Path) -> Iterator[tuple[TestClient, str]]:
    key, _ = create_key(keys, "alice")
    with started_client(models, api_keys_file=keys) as c:
        yield c, key


# ------------------------------------------------------------------------------ keys file + CLI


def test_cli_create_prints_the_key_once_and_stores_only_its_hash(
        keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--file", str(keys), "--name", "ci", "--rate", "2",
                 "--burst", "3", "--concurrency", "1", "--tasks", "derain,denoise"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert key.startswith("dmk_") and len(key) > 40 and "\n" not in key
    assert "shown only this once" in out.err
    stored = keys.read_text()
    assert key not in stored and hash_key(key) in stored
    (record,) = read_keys_file(keys)
    assert (record.name, record.rate_per_s, record.burst, record.max_concurrent, record.tasks) \
        == ("ci", 2.0, 3, 1, ("derain", "denoise"))

    assert main(["keys", "list", "--file", str(keys)]) == 0
    listing = capsys.readouterr().out
    assert "ci" in listing and "derain,denoise" in listing
    assert key not in listing and hash_key(key) not in listing
    assert main(["keys", "list", "--file", str(keys), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "ci"

    assert main(["keys", "create", "--file", str(keys), "--name", "ci"]) == 2  # duplicate
    assert "already exists" in capsys.readouterr().err
    assert main(["keys", "revoke", "--file", str(keys), "--name", "nobody"]) == 2
    assert "no key named 'nobody'" in capsys.readouterr().err
    assert main(["keys", "revoke", "--file", str(keys), "--name", "ci"]) == 0
    assert read_keys_file(keys) == []
    assert main(["keys", "create", "--file", str(keys), "--name", "bad name!"]) == 2


def test_keys_file_errors_name_the_problem(keys: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        KeyRing(keys)
    keys.write_text("{not json")
    with pytest.raises(KeyFileError, match="not valid JSON"):
        read_keys_file(keys)
    keys.write_text(json.dumps({"keys": [{"name": "a", "sha256": "xyz"}]}))
    with pytest.raises(KeyFileError, match="sha256"):
        read_keys_file(keys)
    keys.write_text(json.dumps({"keys": [{"name": "a", "sha256": "0" * 64, "burst": -1}]}))
    with pytest.raises(KeyFileError, match="burst"):
        read_keys_file(keys)


def test_serve_refuses_to_start_with_a_missing_keys_file(
        models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DIFFMAMBA_API_KEYS_FILE", str(tmp_path / "missing.json"))
    args = build_parser(["serve"]).parse_args(["serve", "--models", str(models), "--port", "1"])
    level = logging.getLogger("service").level
    try:
        assert args.run(args) == 2  # before any socket is opened
    finally:
        logging.getLogger("service").setLevel(level)
    err = capsys.readouterr().err
    assert "API keys file not found" in err and "missing.json" in err


# ---------------------------------------------------------------------------------- the server


def test_missing_wrong_and_valid_keys(client: tuple[TestClient, str]) -> None:
    c, key = client
    missing = c.get("/v1/tasks")
    assert missing.status_code == 401 and missing.json()["error"] == "missing_api_key"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = c.get("/v1/tasks", headers=_bearer(key + "x"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_api_key"
    basic = c.get("/v1/tasks", headers={"Authorization": f"Basic {key}"})
    assert basic.status_code == 401 and "Bearer" in basic.json()["detail"]
    assert c.get("/v1/tasks", headers=_bearer(key)).status_code == 200
    assert c.get("/v1/tasks", headers={"X-API-Key": key}).status_code == 200
    r = c.post("/restore", params={"task": "derain"}, content=b"x", headers=PNG)
    assert r.status_code == 401  # refused before the body or the model is touched


def test_probes_and_metrics_need_no_key(client: tuple[TestClient, str]) -> None:
    c, _ = client
    for path in ("/healthz", "/readyz", "/metrics"):
        assert c.get(path).status_code in (200, 503), path  # /readyz: 503 while loading
        assert c.get(path).status_code != 401


def test_exempt_paths_are_configurable(models: Path, keys: Path) -> None:
    key, _ = create_key(keys, "ops")
    with started_client(models, api_keys_file=keys, auth_exempt_paths=["/healthz"]) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=_bearer(key)).status_code == 200


def test_revoked_and_new_keys_apply_without_restart(client: tuple[TestClient, str],
                                                    keys: Path) -> None:
    c, key = client
    assert c.get("/v1/tasks", headers=_bearer(key)).status_code == 200
    new_key, _ = create_key(keys, "bob")  # another process (the CLI) edits the file
    assert c.get("/v1/tasks", headers=_bearer(new_key)).status_code == 200
    revoke_key(keys, "alice")
    r = c.get("/v1/tasks", headers=_bearer(key))
    assert r.status_code == 401 and r.json()["error"] == "invalid_api_key"
    assert c.get("/v1/tasks", headers=_bearer(new_key)).status_code == 200


def test_a_broken_edit_keeps_the_last_good_keys(client: tuple[TestClient, str],
                                                keys: Path) -> None:
    c, key = client
    good = keys.read_text()
    keys.write_text(good[: len(good) // 2])  # an editor caught mid-write
    assert c.get("/v1/tasks", headers=_bearer(key)).status_code == 200
    keys.unlink()  # no file: no key is valid
    assert c.get("/v1/tasks", headers=_bearer(key)).status_code == 401
    keys.write_text(good)
    assert c.get("/v1/tasks", headers=_bearer(key)).status_code == 200


def test_task_allow_list_is_403(models: Path, keys: Path) -> None:
    key, _ = create_key(keys, "denoiser", tasks=["denoise"])
    with started_client(models, api_keys_file=keys) as c:
        r = c.post("/restore", params={"task": "derain"}, content=b"x",
                   headers={**PNG, **_bearer(key)})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert "'derain'" in r.json()["detail"] and "denoise" in r.json()["detail"]
        assert c.get("/v1/tasks", headers=_bearer(key)).status_code == 200


def test_rate_limit_is_429_with_retry_after(models: Path, keys: Path) -> None:
    slow, _ = create_key(keys, "slow", rate_per_s=0.5, burst=2)
    other, _ = create_key(keys, "other")
    with started_client(models, api_keys_file=keys) as c:
        assert [c.get("/v1/tasks", headers=_bearer(slow)).status_code for _ in range(2)] \
            == [200, 200]
        r = c.get("/v1/tasks", headers=_bearer(slow))
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["retry-after"]) == 2  # one token per 2 s
        assert c.get("/v1/tasks", headers=_bearer(other)).status_code == 200  # per key
        assert c.get("/healthz").status_code == 200


def test_default_rate_limit_from_settings(models: Path, keys: Path) -> None:
    key, _ = create_key(keys, "default")
    with started_client(models, api_keys_file=keys, rate_limit_per_s=1.0,
                        rate_limit_burst=3) as c:
        codes = [c.get("/v1/tasks", headers=_bearer(key)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]


def test_concurrency_cap_per_key(models: Path, keys: Path) -> None:
    key, _ = create_key(keys, "single", max_concurrent=1)
    body = png_bytes(random_image(96, 96))  # 16 tiles of 32 x 50 steps: far longer than the test
    head = (f"POST /restore?task=derain&steps=50 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n"
            f"Authorization: Bearer {key}\r\n\r\n").encode()
    with LiveServer(models, api_keys_file=keys, tile_size=32, tile_overlap=8) as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(head + body)
            deadline = time.monotonic() + 20
            while 'diffmamba_requests_in_flight{task="derain"} 1.0' not in \
                    httpx.get(f"{srv.url}/metrics").text:
                assert time.monotonic() < deadline, "the slow request never started"
                time.sleep(0.02)
            second = httpx.get(f"{srv.url}/v1/tasks", headers=_bearer(key))
            assert second.status_code == 429 and second.json()["error"] == "too_many_concurrent"
            assert second.headers["retry-after"] == "1"
        # The client hung up: its request is cancelled and its slot released.
        deadline = time.monotonic() + 20
        while (r := httpx.get(f"{srv.url}/v1/tasks", headers=_bearer(key))).status_code == 429:
            assert time.monotonic() < deadline, "the slot was never released"
            time.sleep(0.05)
        assert r.status_code == 200


def test_keys_are_never_logged(models: Path, keys: Path,
                               caplog: pytest.LogCaptureFixture) -> None:
    key, _ = create_key(keys, "secret-holder", rate_per_s=0.1, burst=1)
    with caplog.at_level(logging.DEBUG), started_client(models, api_keys_file=keys) as c:
        for headers in (_bearer(key), _bearer(key), {"X-API-Key": key + "zz"}):
            c.get("/v1/tasks", headers=headers)
        revoke_key(keys, "secret-holder")
        c.get("/v1/tasks", headers=_bearer(key))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "secret-holder" in text  # the name is what identifies a key in the log
    assert key not in text and key[4:20] not in text


# ---------------------------------------------------------------------------------- deployment


def test_kubernetes_mounts_the_keys_secret_where_the_setting_points() -> None:
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent
    deployment = yaml.safe_load((root / "k8s" / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    keys_file = Path(env["DIFFMAMBA_API_KEYS_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(keys_file.parent))
    assert mount["readOnly"] is True and "subPath" not in mount  # subPath mounts never update
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "diffmamba-api-keys"
    assert "items" not in volume["secret"]  # every key of the Secret, named as in it
    readme = (root / "README.md").read_text()
    assert f"kubectl create secret generic {volume['secret']['secretName']}" in readme
    assert f"--from-file={keys_file.name}=" in readme


def test_compose_passes_the_keys_file_as_a_secret() -> None:
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent
    compose = yaml.safe_load((root / "docker" / "compose.yaml").read_text())
    for name in ("diffmamba", "diffmamba-gpu"):
        service = compose["services"][name]
        (secret,) = service["secrets"]
        assert secret["source"] in compose["secrets"]
        target = secret["target"]
        assert service["environment"]["DIFFMAMBA_API_KEYS_FILE"] == f"/run/secrets/{target}"
    source = compose["secrets"]["api-keys"]["file"]
    default = source.split(":-", 1)[1].rstrip("}")  # ${DIFFMAMBA_API_KEYS_HOST_FILE:-...}
    ignored = (root / ".gitignore").read_text().splitlines()
    assert "/docker/" + default.removeprefix("./") in ignored  # a local keys file stays local
    assert f"diffmamba keys create --file docker/{default.removeprefix('./')}" in \
        (root / "README.md").read_text()
