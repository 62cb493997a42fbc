"""``diffmamba serve``: the HTTP service with settings from flags and ``DIFFMAMBA_*``."""

from __future__ import annotations

import argparse
import logging

from pydantic import ValidationError

from service.cli.common import fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the restoration HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--models", default=None, help="models directory (DIFFMAMBA_MODELS_DIR)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="DIFFMAMBA_DEVICE (default auto)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in {"models_dir": args.models, "device": args.device}.items()
                 if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        return fail(f"invalid settings: {exc}")
    if not settings.models_dir.is_dir():
        return fail(f"models directory not found: {settings.models_dir}")
    logging.getLogger("service").setLevel(args.log_level.upper())
    uvicorn.run(create_app(settings), host=args.host, port=args.port,
                log_level=args.log_level)
    return 0
