"""The app's middleware stack, in one place because its order is part of the behaviour.

From the outside in:

1. :class:`~service.api.security.SecurityMiddleware` -- request id, security headers and the
   JSON 500, so they apply to every answer below, refusals included;
2. :class:`~service.api.cors.CorsMiddleware` -- preflights are answered before authentication
   (browsers send them without credentials), and refusals still carry CORS headers so a page
   can read them;
3. :class:`~service.api.auth.AuthMiddleware` (with a keys file) -- 401/403/429 before any work;
4. :class:`~service.api.drain.InFlightMiddleware` -- counts admitted requests for the drain;
5. :class:`~service.api.timeouts.BodyTimeoutMiddleware` -- bounds the body reads of the routes.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.api.auth import AuthMiddleware
from service.api.cors import CorsMiddleware
from service.api.drain import InFlightMiddleware
from service.api.security import SecurityMiddleware
from service.api.state import ServiceState
from service.api.timeouts import BodyTimeoutMiddleware
from service.auth import KeyRing


def install_middleware(app: FastAPI, state: ServiceState) -> None:
    """Raises :class:`~service.auth.KeyFileError` when the configured keys file is unusable."""
    s = state.settings
    # Starlette wraps each added middleware around those added before: innermost first.
    app.add_middleware(BodyTimeoutMiddleware, body_timeout_s=s.body_timeout_s,
                       min_upload_rate=s.min_upload_rate)
    app.add_middleware(InFlightMiddleware, state=state)
    if s.api_keys_file is not None:
        app.add_middleware(AuthMiddleware, ring=KeyRing(s.api_keys_file), settings=s)
    app.add_middleware(CorsMiddleware, allow_origins=s.cors_allow_origins)
    app.add_middleware(SecurityMiddleware)
