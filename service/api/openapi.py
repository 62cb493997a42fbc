"""``/openapi.json`` as the contract: what this server, with its settings and models, accepts.

FastAPI builds the document from the routes, which cannot know what is decided at start-up:
the served tasks (found in the models directory), the smallest ``tile`` (above the configured
overlap), whether API keys are required. So the document is rebuilt from FastAPI's, with those
facts filled in, whenever the set of tasks changes (a document fetched while the models load
has ``task`` as a plain string; once they are loaded, an enum of the served tasks).

It also undoes two FastAPI defaults that contradict the server: optional query parameters
typed ``anyOf [integer, null]`` (a query string cannot carry a null: absent is the default), and
the 422 ``HTTPValidationError`` body, which this API never sends (service.api.errors answers
every validation error as ``{"error": "invalid_parameter", "detail": …}``).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import FastAPI

from service.api.auth import is_exempt
from service.api.restore import TILE_STEP, tile_minimum
from service.api.schemas import RETRY_AFTER, ErrorBody
from service.api.state import ServiceState
from service.settings import Settings

FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
JOB_ID_PATTERN = "^[0-9a-f]{32}$"  # service.api.jobs.JOB_ID; another id is simply not found
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# Where a job's id leads, for clients and for stateful testing (OpenAPI links).
JOB_LINKS = {
    "GetJob": ("/v1/jobs/{job_id}", "get"),
    "CancelJob": ("/v1/jobs/{job_id}", "delete"),
    "GetJobResult": ("/v1/jobs/{job_id}/result", "get"),
    "JobEvents": ("/v1/jobs/{job_id}/events", "get"),
}


def install_openapi(app: FastAPI, state: ServiceState) -> None:
    """Replace ``app.openapi`` (what ``/openapi.json`` and ``/docs`` read)."""
    built: dict[tuple[str, ...], dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        tasks = tuple(sorted(state.tasks)) if state.ready else ()
        if tasks not in built:
            app.openapi_schema = None  # FastAPI's own cache
            built.clear()
            built[tasks] = contract(copy.deepcopy(FastAPI.openapi(app)), state.settings, tasks)
        app.openapi_schema = built[tasks]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def contract(doc: dict[str, Any], settings: Settings, tasks: tuple[str, ...]) -> dict[str, Any]:
    """FastAPI's document ``doc`` with this server's facts (in place; returned)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            _parameters(operation, settings, tasks)
            _validation_response(operation)
            if settings.api_keys_file is not None and \
                    not is_exempt(path, settings.auth_exempt_paths):
                _authentication(operation)
            if method == "post" and "202" in operation.get("responses", {}):
                operation["responses"]["202"]["links"] = _job_links(doc)
    if settings.api_keys_file is not None:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "a key of `diffmamba keys create`"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    return doc


def _parameters(operation: dict[str, Any], settings: Settings, tasks: tuple[str, ...]) -> None:
    if not settings.job_webhook_hosts:  # every webhook is refused: the parameter is not offered
        operation["parameters"] = [p for p in operation.get("parameters", [])
                                   if (p.get("in"), p.get("name")) != ("query", "webhook")]
    for param in operation.get("parameters", []):
        schema = param.get("schema", {})
        if param.get("in") == "query" and not param.get("required"):
            param["schema"] = schema = _without_null(schema)
        name = param.get("name")
        if param.get("in") == "query" and name == "task" and tasks:
            schema["enum"] = list(tasks)
        elif param.get("in") == "query" and name == "tile":
            schema["minimum"] = tile_minimum(settings.tile_overlap)
            schema["multipleOf"] = TILE_STEP
        elif param.get("in") == "path" and name == "job_id":
            schema["pattern"] = JOB_ID_PATTERN
        elif param.get("in") == "query" and name == "webhook":
            schema["pattern"] = webhook_pattern(settings.job_webhook_hosts)


def webhook_pattern(hosts: list[str]) -> str:
    """The URLs service.jobs.webhook.check_webhook_url lets through, as a JSON Schema pattern:
    http(s), an allowed host (``.example.com``: any subdomain), a port, then a path without
    spaces or control characters."""
    names = [re.escape(h.strip().lower()) for h in hosts if not h.strip().startswith(".")]
    names += [r"[a-z0-9-]+(?:\.[a-z0-9-]+)*" + re.escape(h.strip().lower())
              for h in hosts if h.strip().startswith(".")]
    return rf"^https?://(?:{'|'.join(names)})(?::[0-9]{{1,4}})?(?:[/?#][^\x00-\x20\x7f]*)?$"


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf [X, null]`` -> X, keeping title, description and default."""
    options = schema.get("anyOf")
    if not options:
        return schema
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**kept[0], **rest}


def _validation_response(operation: dict[str, Any]) -> None:
    """Drop FastAPI's 422 where the route did not declare ours: it can receive no value that
    fails validation (a string path parameter)."""
    responses = operation.get("responses", {})
    content = responses.get("422", {}).get("content", {}).get("application/json", {})
    if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
        del responses["422"]


def _authentication(operation: dict[str, Any]) -> None:
    """What service.api.auth.AuthMiddleware answers before the route runs."""
    operation["security"] = [{"bearer": []}, {"apiKey": []}]
    responses = operation.setdefault("responses", {})
    json_error = {"application/json": {"schema": ERROR_REF}}
    responses["401"] = {
        "description": "`missing_api_key`, `invalid_api_key`", "content": json_error,
        "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}}
    responses["429"] = {
        "description": "`rate_limited`, `too_many_concurrent`: over this key's limits",
        "content": json_error, "headers": {"Retry-After": {**RETRY_AFTER, "required": True}}}
    if any(p.get("name") == "task" for p in operation.get("parameters", [])):
        responses["403"] = {"description": "`forbidden`: this key may not use the task",
                            "content": json_error}


def _job_links(doc: dict[str, Any]) -> dict[str, Any]:
    links = {}
    for name, (path, method) in JOB_LINKS.items():
        target = doc["paths"].get(path, {}).get(method)
        if target is not None:
            links[name] = {"operationId": target["operationId"],
                           "description": f"{method.upper()} {path}",
                           "parameters": {"job_id": "$response.body#/id"}}
    return links
