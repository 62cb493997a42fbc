"""PyPI wheels as pool sources: ``pip download`` one pinned wheel and unpack it.

A few Python packages ship real photographs as package data (glymur's JPEG 2000 sample,
imgaug's quokka). Like the Debian packages, they are fetched only while building the pool
offline, never when the service runs. A source is named ``pypi:NAME==VERSION``: the
version is pinned because the allow-list names files inside that exact wheel.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

PREFIX = "pypi:"
_SPEC = re.compile(r"^pypi:([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")


class WheelError(RuntimeError):
    """A wheel that could not be downloaded or unpacked."""


def is_wheel_source(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_spec(name: str) -> tuple[str, str]:
    """``pypi:NAME==VERSION`` -> (NAME, VERSION)."""
    m = _SPEC.match(name)
    if not m:
        raise WheelError(f"{name!r}: a PyPI source is written pypi:NAME==VERSION")
    return m.group(1), m.group(2)


def _normalise(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project).lower()


def find_wheel(folder: Path, project: str, version: str) -> Path:
    """The wheel of ``project`` ``version`` in ``folder`` (wheel names normalise '-' to '_')."""
    want = f"{_normalise(project)}-{version}-"
    wheels = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(want.lower()))
    if not wheels:
        raise WheelError(f"no wheel of {project} {version} in {folder}")
    return wheels[-1]


def unpack_wheel(wheel: Path, root: Path) -> None:
    """Extract ``wheel`` (a zip) under ``root``, refusing members that would land outside it."""
    root = root.resolve()
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                dest = (root / info.filename).resolve()
                if root not in dest.parents and dest != root:
                    raise WheelError(f"{wheel.name}: member {info.filename!r} escapes the folder")
            zf.extractall(root)
    except zipfile.BadZipFile as exc:
        raise WheelError(f"{wheel.name} is not a wheel (zip): {exc}") from exc


def download_wheel(name: str, workdir: Path) -> tuple[str, Path, str]:
    """``pip download`` the pinned wheel of ``pypi:NAME==VERSION`` and unpack it.

    Returns (version, unpacked root, wheel file name).
    """
    project, version = parse_spec(name)
    dest = workdir / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(dest), f"{project}=={version}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:  # pragma: no cover - sys.executable always exists
        raise WheelError(f"cannot run pip: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise WheelError(f"pip download {project}=={version} failed: {' '.join(tail)}")
    wheel = find_wheel(dest, project, version)
    root = workdir / "root" / f"pypi-{_normalise(project)}"
    root.mkdir(parents=True, exist_ok=True)
    unpack_wheel(wheel, root)
    return version, root, wheel.name
