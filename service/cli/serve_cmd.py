"""``diffmamba serve``: the HTTP service with settings from flags and ``DIFFMAMBA_*``.

``--host``, ``--port`` and ``--log-level`` also read ``DIFFMAMBA_HOST``, ``DIFFMAMBA_PORT`` and
``DIFFMAMBA_LOG_LEVEL``, so a container is configured from its environment alone. The server
drains on SIGTERM (see ``service.api.drain``) and then exits with status 0. Connections are
guarded by ``service.api.connection`` (header deadline, connection cap, keep-alive idle time).
"""

from __future__ import annotations

import argparse
import logging
import os

from service.cli.common import add_threads_option, fail

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# Read here rather than by Settings (they configure the server, not the service).
ENV_VARS = ("DIFFMAMBA_HOST", "DIFFMAMBA_PORT", "DIFFMAMBA_LOG_LEVEL")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the restoration HTTP service")
    p.add_argument("--host", default=os.environ.get("DIFFMAMBA_HOST", "127.0.0.1"),
                   help="bind address (DIFFMAMBA_HOST, default 127.0.0.1)")
    # A string default goes through ``type`` too: a bad DIFFMAMBA_PORT is an argparse error.
    p.add_argument("--port", type=int, default=os.environ.get("DIFFMAMBA_PORT", "8000"),
                   help="TCP port (DIFFMAMBA_PORT, default 8000)")
    p.add_argument("--models", default=None, help="models directory (DIFFMAMBA_MODELS_DIR)")
    add_threads_option(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="DIFFMAMBA_DEVICE (default auto)")
    p.add_argument("--log-level", default=os.environ.get("DIFFMAMBA_LOG_LEVEL", "info").lower(),
                   choices=LOG_LEVELS, help="DIFFMAMBA_LOG_LEVEL (default info)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.api import create_app
    from service.api.drain import serve
    from service.auth import KeyFileError
    from service.settings import Settings

    if args.log_level not in LOG_LEVELS:  # argparse checks choices on the command line only
        return fail(f"invalid log level {args.log_level!r}; choose from {', '.join(LOG_LEVELS)}")
    overrides = {k: v for k, v in {"models_dir": args.models, "device": args.device}.items()
                 if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        return fail(f"invalid settings: {exc}")
    if not settings.models_dir.is_dir():
        return fail(f"models directory not found: {settings.models_dir}")
    logging.getLogger("service").setLevel(args.log_level.upper())
    try:
        app = create_app(settings)
    except KeyFileError as exc:
        return fail(f"DIFFMAMBA_API_KEYS_FILE: {exc}")
    serve(app, app.state.service, host=args.host, port=args.port, log_level=args.log_level)
    return 0
