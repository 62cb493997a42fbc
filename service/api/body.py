"""Reading the uploaded image: raw ``image/*`` body or multipart field ``file``, size-capped.

The cap is enforced while streaming, so an oversized upload is refused before it is buffered.
A client that goes away mid-upload is a 499 (its fault, not a 500). A multipart body must
carry its closing boundary (Starlette's parser accepts a body cut short and simply yields fewer
parts, which would read as a "missing" file) and exactly one ``file`` part (silently keeping
the last of several would restore an image the client may not have meant).
"""

from __future__ import annotations

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from service.api.errors import CLIENT_CLOSED, ApiError

RAW_TYPES = ("image/", "application/octet-stream")


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "payload_too_large",
                       f"upload of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, "payload_too_large",
                               f"upload exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(CLIENT_CLOSED, "client_closed_request",
                       f"client disconnected after {size} byte(s) of the upload") from None
    return b"".join(chunks)


def _check_multipart_complete(content_type: str, body: bytes) -> None:
    """The body ends with its closing delimiter ``--boundary--`` (RFC 2046 5.1.1)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart",
                       "the multipart Content-Type has no boundary parameter")
    closing = b"--" + boundary + b"--"
    if not (body.startswith(closing) or b"\r\n" + closing in body):
        raise ApiError(400, "invalid_multipart",
                       f"the multipart body is truncated: its closing boundary is missing "
                       f"after {len(body)} bytes")


async def read_image_upload(request: Request, max_bytes: int) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type.startswith(RAW_TYPES) or not content_type:
        body = await _read_capped(request, max_bytes)
    elif content_type == "multipart/form-data":
        # Cap the whole body first, then let Starlette parse it from the cached bytes.
        request._body = await _read_capped(request, max_bytes + 64 * 1024)
        _check_multipart_complete(request.headers["content-type"], request._body)
        try:
            form = await request.form()
        except Exception as exc:
            raise ApiError(
                400, "invalid_multipart", f"could not parse multipart body: {exc}"
            ) from exc
        try:
            parts = form.getlist("file")
            if len(parts) > 1:
                raise ApiError(400, "multiple_files",
                               f"the multipart body has {len(parts)} parts named 'file'; "
                               "send exactly one image per request")
            if not parts or not isinstance(parts[0], UploadFile):
                raise ApiError(400, "missing_file",
                               "multipart body has no file field named 'file'")
            body = await parts[0].read()
        finally:
            await form.close()
        if len(body) > max_bytes:
            raise ApiError(413, "payload_too_large",
                           f"upload exceeds the limit of {max_bytes} bytes")
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {content_type!r}: send the image as image/* or as "
                       "multipart/form-data with a field named 'file'")
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty: send an image")
    return body
