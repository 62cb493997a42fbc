"""Test helpers for the pool sources: write Qt resource bundles (``.rcc``) and wheels.

The writer follows Qt's binary layout (``rcc --binary``, format version 2/3): header, tree
of 22-byte nodes with each directory's children contiguous, a name table (length, hash,
UTF-16BE) and a data table (length-prefixed; ``qCompress`` blobs carry a 4-byte size).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path


def _qt_hash(name: str) -> int:
    h = 0
    for ch in name:
        h = ((h << 4) + ord(ch)) & 0xFFFFFFFF
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h


def write_rcc(path: Path, files: dict[str, bytes], compress: set[str] = frozenset(),
              version: int = 3) -> None:
    """Write ``files`` (member path, starting with '/', -> bytes) as a Qt resource bundle;
    members in ``compress`` are stored zlib-compressed the way ``qCompress`` does."""
    tree: dict = {}
    for member, data in files.items():
        parts = member.strip("/").split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = (member, data)

    names = bytearray()
    name_offsets: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            names.extend(struct.pack(">HI", len(name), _qt_hash(name)))
            names.extend(name.encode("utf-16-be"))
        return name_offsets[name]

    payload = bytearray()
    nodes: list[bytes] = [b""]  # index 0 is the root directory
    node_names = [0]
    queue: list[tuple[int, dict]] = [(0, tree)]
    while queue:  # breadth first: each directory's children get consecutive indices
        index, children = queue.pop(0)
        items = sorted(children.items(), key=lambda kv: _qt_hash(kv[0]))
        first = len(nodes)
        nodes[index] = struct.pack(">IHII", node_names[index], 0x02, len(items), first) + \
            b"\0" * 8
        for name, value in items:
            at = len(nodes)
            nodes.append(b"")
            node_names.append(name_offset(name))
            if isinstance(value, dict):
                queue.append((at, value))
                continue
            member, data = value
            flags = 0
            if member in compress:
                data = struct.pack(">I", len(data)) + zlib.compress(data)
                flags = 0x01
            data_offset = len(payload)
            payload.extend(struct.pack(">I", len(data)) + data)
            nodes[at] = struct.pack(">IHHHI", node_names[at], flags, 0, 0, data_offset) + \
                b"\0" * 8
    header_size = 24 if version >= 3 else 20
    tree_bytes = b"".join(nodes)
    tree_at = header_size
    data_at = tree_at + len(tree_bytes)
    names_at = data_at + len(payload)
    header = b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at)
    if version >= 3:
        header += struct.pack(">I", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + tree_bytes + bytes(payload) + bytes(names))


def write_wheel(folder: Path, project: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal pure-Python wheel (enough for pip to download it from a local folder)."""
    dist = project.replace("-", "_")
    wheel = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/METADATA",
                    f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel
