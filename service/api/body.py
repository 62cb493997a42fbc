"""Reading the uploaded image: raw ``image/*`` body or multipart field ``file``, size-capped.

The cap is enforced while streaming, so an oversized upload is refused before it is buffered.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from service.api.errors import ApiError

RAW_TYPES = ("image/", "application/octet-stream")


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "payload_too_large",
                       f"upload of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "payload_too_large",
                           f"upload exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image_upload(request: Request, max_bytes: int) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type.startswith(RAW_TYPES) or not content_type:
        body = await _read_capped(request, max_bytes)
    elif content_type == "multipart/form-data":
        # Cap the whole body first, then let Starlette parse it from the cached bytes.
        request._body = await _read_capped(request, max_bytes + 64 * 1024)
        try:
            form = await request.form()
        except Exception as exc:
            raise ApiError(
                400, "invalid_multipart", f"could not parse multipart body: {exc}"
            ) from exc
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "missing_file",
                           "multipart body has no file field named 'file'")
        body = await upload.read()
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
