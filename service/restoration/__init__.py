"""Restoring an image with any kind of model: one session protocol, three sessions (diffusion
over tiles, one pass, one scaled pass), whole-vs-tiled decided in one place, and a synchronous
driver; the service drives the same sessions through its batcher."""

from service.restoration.driver import (
    Pass,
    model_pass,
    model_placement,
    restore_image,
    restore_one_pass,
    run_session,
)
from service.restoration.plan import WHOLE_IMAGE_MAX_PIXELS, TilingPolicy, open_session
from service.restoration.protocol import RestorationSession

__all__ = [
    "WHOLE_IMAGE_MAX_PIXELS",
    "Pass",
    "RestorationSession",
    "TilingPolicy",
    "model_pass",
    "model_placement",
    "open_session",
    "restore_image",
    "restore_one_pass",
    "run_session",
]
