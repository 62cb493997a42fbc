"""The browser side of the service: the try-it page at ``/`` and an offline ``/docs``.

Everything is served from files in this package (``static/``) and from the installed
``swagger-ui-bundle-v2`` package, never from a CDN, so both pages work on a machine without
internet access and under the same-origin Content-Security-Policy of ``service.api.security``.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.web.docs import install_docs
from service.web.page import install_page


def install_web(app: FastAPI) -> None:
    """Create the app with ``docs_url=None, redoc_url=None``: ``/docs`` comes from here."""
    install_docs(app)
    install_page(app)


__all__ = ["install_web"]
