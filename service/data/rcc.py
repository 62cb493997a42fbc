"""Read files out of a Qt resource bundle (``.rcc``) without Qt.

Some Debian packages (GCompris) ship their photographs only inside compiled Qt resource
bundles, so the pool builder has to look inside them. The format (``rcc --binary``) is a
header, a tree of fixed-size nodes, a name table (UTF-16BE) and a data table; each file's
data is stored raw, zlib-compressed (``qCompress``: a 4-byte size, then a zlib stream) or
zstd-compressed. Only raw and zlib are read here: Python has no zstd decoder before 3.14,
and image members are stored raw anyway (already-compressed data does not shrink).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_DIRECTORY = 0x02
_ZLIB = 0x01
_ZSTD = 0x04


class RccError(ValueError):
    """A file that is not a readable Qt resource bundle, or a missing member."""


class ResourceBundle:
    """The member paths of one ``.rcc`` file and their bytes."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 20 or data[:4] != b"qres":
            raise RccError("not a Qt resource bundle (no 'qres' magic)")
        self._data = data
        version, self._tree, self._payload, self._names = struct.unpack(">IIII", data[4:20])
        if version not in (1, 2, 3):
            raise RccError(f"unsupported Qt resource bundle version {version}")
        self._node_size = 14 if version == 1 else 22  # v2+ add an 8-byte modification time
        self._files: dict[str, tuple[int, int]] = {}
        self._walk(0, "", depth=0)

    @classmethod
    def open(cls, path: str | Path) -> ResourceBundle:
        return cls(Path(path).read_bytes())

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        end = offset + struct.calcsize(fmt)
        if offset < 0 or end > len(self._data):
            raise RccError("truncated Qt resource bundle")
        return struct.unpack(fmt, self._data[offset:end])

    def _name(self, offset: int) -> str:
        (length,) = self._unpack(">H", self._names + offset)
        start = self._names + offset + 6  # length, then a 4-byte hash, then the characters
        raw = self._data[start:start + 2 * length]
        if len(raw) != 2 * length:
            raise RccError("truncated Qt resource bundle")
        return raw.decode("utf-16-be")

    def _walk(self, index: int, prefix: str, depth: int) -> None:
        if depth > 64:
            raise RccError("Qt resource bundle nests too deeply (corrupt tree)")
        node = self._tree + index * self._node_size
        name_offset, flags = self._unpack(">IH", node)
        name = self._name(name_offset) if index else ""
        if flags & _DIRECTORY:
            count, first = self._unpack(">II", node + 6)
            if first <= index:
                raise RccError("Qt resource bundle tree points backwards (corrupt tree)")
            for child in range(first, first + count):
                self._walk(child, f"{prefix}{name}/" if index else "/", depth + 1)
        else:
            (data_offset,) = self._unpack(">I", node + 10)
            self._files[f"{prefix}{name}"] = (flags, self._payload + data_offset)

    def names(self) -> list[str]:
        """Member paths, each starting with ``/``, sorted."""
        return sorted(self._files)

    def read(self, member: str) -> bytes:
        """The (decompressed) bytes of ``member``."""
        if member not in self._files:
            raise RccError(f"no member {member!r} in the Qt resource bundle")
        flags, offset = self._files[member]
        (size,) = self._unpack(">I", offset)
        raw = self._data[offset + 4:offset + 4 + size]
        if len(raw) != size:
            raise RccError("truncated Qt resource bundle")
        if flags & _ZSTD:
            raise RccError(f"{member} is zstd-compressed, which this reader does not support")
        if flags & _ZLIB:
            try:
                return zlib.decompress(raw[4:])
            except zlib.error as exc:
                raise RccError(f"{member}: bad zlib data ({exc})") from exc
        return raw
