"""The API keys file: one record per key, holding the key's SHA-256, never the key.

Why a plain SHA-256 and not a salted slow hash (scrypt, PBKDF2): the keys are generated here,
256 random bits each, so there is nothing to brute-force or look up in a dictionary; salting
and key stretching protect *low-entropy* secrets such as passwords. An unsalted digest lets the
server find a key with one dictionary lookup per request, where a salted hash would have to be
recomputed against every record (with a slow KDF, tens of milliseconds each). Reading the file
still reveals no key.

The file is JSON, written atomically (temporary file + rename) so the server, which re-reads
it when its modification time changes, never sees half a file::

    {"version": 1, "keys": [
        {"name": "alice", "sha256": "9f86...", "created": "2025-01-01T00:00:00Z",
         "rate_per_s": 2.0, "burst": 10, "max_concurrent": 2, "tasks": ["derain"]}]}

``rate_per_s``, ``burst``, ``max_concurrent`` and ``tasks`` are optional per-key overrides;
absent, the server's settings apply (and every task is allowed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger("service.auth")

KEY_PREFIX = "dmk_"  # recognisable by secret scanners; not part of the security
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
FILE_VERSION = 1
NEW_FILE_MODE = 0o644  # digests only; a container user other than the owner must read it


class KeyFileError(Exception):
    """The keys file is missing, unreadable or malformed; the message says which and where."""


@dataclass(frozen=True)
class ApiKeyRecord:
    name: str
    sha256: str
    created: str
    rate_per_s: float | None = None
    burst: int | None = None
    max_concurrent: int | None = None
    tasks: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.tasks is not None:
            data["tasks"] = list(self.tasks)
        return data

    def allows_task(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise KeyFileError(f"key name {name!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return name


def _optional_number(entry: dict[str, Any], field: str, kind: type, where: str) -> Any:
    value = entry.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise KeyFileError(f"{where}: {field} must be a positive number, got {value!r}")
    if kind is int and value != int(value):
        raise KeyFileError(f"{where}: {field} must be an integer, got {value!r}")
    return kind(value)


def _record(entry: object, index: int, path: Path) -> ApiKeyRecord:
    where = f"{path}: keys[{index}]"
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where} is not an object")
    name, digest = entry.get("name"), entry.get("sha256")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise KeyFileError(f"{where}: invalid name {name!r}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise KeyFileError(f"{where} ({name}): sha256 must be 64 lowercase hex digits")
    tasks = entry.get("tasks")
    if tasks is not None and (not isinstance(tasks, list)
                              or not all(isinstance(t, str) and t for t in tasks)):
        raise KeyFileError(f"{where} ({name}): tasks must be a list of task names")
    return ApiKeyRecord(
        name=name, sha256=digest, created=str(entry.get("created", "")),
        rate_per_s=_optional_number(entry, "rate_per_s", float, where),
        burst=_optional_number(entry, "burst", int, where),
        max_concurrent=_optional_number(entry, "max_concurrent", int, where),
        tasks=tuple(tasks) if tasks is not None else None,
    )


def read_keys_file(path: Path, *, missing_ok: bool = False) -> list[ApiKeyRecord]:
    """The records of ``path``; ``missing_ok`` reads a missing file as empty (the CLI's
    first ``create``). Raises :class:`KeyFileError` naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return []
        raise KeyFileError(f"API keys file not found: {path}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read API keys file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyFileError(f"{path}: expected an object with a 'keys' list")
    if data.get("version", FILE_VERSION) != FILE_VERSION:
        raise KeyFileError(f"{path}: unsupported version {data.get('version')!r}")
    records = [_record(entry, i, path) for i, entry in enumerate(data["keys"])]
    names = [r.name for r in records]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise KeyFileError(f"{path}: the name {duplicate!r} appears more than once")
    return records


def write_keys_file(path: Path, records: list[ApiKeyRecord]) -> None:
    """Replace ``path`` atomically; an existing file keeps its permissions."""
    payload = json.dumps({"version": FILE_VERSION, "keys": [r.to_json() for r in records]},
                         indent=2) + "\n"
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_key(path: Path, name: str, *, rate_per_s: float | None = None,
               burst: int | None = None, max_concurrent: int | None = None,
               tasks: list[str] | None = None) -> tuple[str, ApiKeyRecord]:
    """Add a key named ``name``; returns the key (shown once, never stored) and its record."""
    check_name(name)
    records = read_keys_file(path, missing_ok=True)
    if any(r.name == name for r in records):
        raise KeyFileError(f"a key named {name!r} already exists in {path}; revoke it first")
    key = new_key()
    record = ApiKeyRecord(
        name=name, sha256=hash_key(key),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        rate_per_s=rate_per_s, burst=burst, max_concurrent=max_concurrent,
        tasks=tuple(tasks) if tasks else None,
    )
    write_keys_file(path, [*records, record])
    return key, record


def revoke_key(path: Path, name: str) -> ApiKeyRecord:
    records = read_keys_file(path)
    match = next((r for r in records if r.name == name), None)
    if match is None:
        known = ", ".join(r.name for r in records) or "none"
        raise KeyFileError(f"no key named {name!r} in {path} (keys: {known})")
    write_keys_file(path, [r for r in records if r.name != name])
    return match


class KeyRing:
    """The server's view of the keys file, re-read whenever the file changes.

    Each lookup costs one ``stat``: the file is parsed again only when its modification time,
    size or inode differ (an atomic replace, a Kubernetes Secret update), so a revoked key
    stops working on the next request without a restart. A missing file means no valid key
    (revoking everything is the safe reading); a malformed one keeps the last good keys and is
    logged, since an editor writing in place can leave half a file for a moment.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.generation = 0
        self._signature = self._stat()
        self._by_hash = self._index(read_keys_file(path))  # at start-up a bad file is fatal

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _index(self, records: list[ApiKeyRecord]) -> dict[str, ApiKeyRecord]:
        self.generation += 1
        return {r.sha256: r for r in records}

    def refresh(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        if signature is None:
            logger.error("API keys file %s is gone: every key is refused until it returns",
                         self.path)
            self._by_hash = self._index([])
            return
        try:
            records = read_keys_file(self.path)
        except KeyFileError as exc:
            logger.error("API keys file changed but cannot be used, keeping %d key(s): %s",
                         len(self._by_hash), exc)
            return
        self._by_hash = self._index(records)
        logger.info("API keys reloaded from %s: %d key(s)", self.path, len(records))

    def lookup(self, key: str) -> ApiKeyRecord | None:
        self.refresh()
        return self._by_hash.get(hash_key(key))

    def names(self) -> set[str]:
        return {r.name for r in self._by_hash.values()}
