"""HTTP API: ``create_app`` is the uvicorn factory."""

from service.api.app import create_app

__all__ = ["create_app"]
