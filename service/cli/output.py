"""Writing a result file: whole or not at all, with the permissions the user's umask gives.

The bytes go to a temporary file in the destination folder and are then renamed into place,
so an interrupted run never leaves a truncated image. ``mkstemp`` creates that file ``0o600``;
it is widened to what ``open()`` would have made (``0o666`` minus the umask) before the rename.
Without ``overwrite`` the rename is a hard link, which fails if the name appeared in the
meantime (another process), instead of replacing it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                  getattr(errno, "ENOSYS", -1)}


class OutputExistsError(FileExistsError):
    """The destination exists and overwriting was not asked for."""


def current_umask() -> int:
    """The process umask (reading it means setting it; set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_output(dest: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``dest`` (creating its folder); returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
        if overwrite:
            os.replace(tmp, dest)
            return dest
        try:
            os.link(tmp, dest)
        except FileExistsError:
            raise OutputExistsError(errno.EEXIST, "output exists", str(dest)) from None
        except OSError as exc:
            if exc.errno not in NO_LINK_ERRNOS:
                raise
            # No hard links here (some network and FAT file systems): check, then rename.
            if dest.exists():
                raise OutputExistsError(errno.EEXIST, "output exists", str(dest)) from None
            os.replace(tmp, dest)
        return dest
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
