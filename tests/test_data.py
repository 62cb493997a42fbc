"""Training data: degradations, datasets and the pool builder, on small arrays made here."""

from __future__ import annotations

import argparse
import bz2
import io
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pool_helpers import write_rcc

from service.cli import data_cmd
from service.data import pool as pool_mod
from service.data import wheels
from service.data.datasets import (
    DETAIL_TRIES,
    PairedFolderDataset,
    SyntheticPairDataset,
    crop_detail,
    detailed_crop,
    fixed_validation_set,
)
from service.data.degrade import (
    EVAL_SIGMA,
    TASKS,
    NoiseParams,
    RainParams,
    StreakLayer,
    add_haze,
    add_noise,
    add_rain,
    convolve,
    degrade,
    motion_blur,
    random_motion_kernel,
    sample_noise_params,
    sample_rain_params,
)
from service.data.degrade.rain import REGIMES, streak_layer
from service.data.evaluation import EVALUATION_NAMES
from service.data.photos import Photo, as_photo
from service.data.pool import (
    ALLOW_LIST,
    DEFAULT_PACKAGES,
    IMAGE_SUFFIXES,
    Candidate,
    PackageSource,
    PoolError,
    build_pool,
    is_evaluation_name,
    select_images,
    split_images,
)


def _image(h: int = 48, w: int = 56, seed: int = 0) -> np.ndarray:
    """A smooth colourful test image in [0.1, 0.9] (no clipping from the degradations)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    chans = [0.5 + 0.4 * np.sin(6 * x * rng.uniform(0.5, 2) + 4 * y + k) for k in range(3)]
    return np.stack(chans, axis=2).astype(np.float32)


def _dark_channel(img: np.ndarray) -> float:
    return float(img.min(axis=2).mean())


# --- degradations ---------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("evaluation", [False, True])
def test_degrade_is_seeded_and_well_formed(task: str, evaluation: bool) -> None:
    clean = _image()
    a = degrade(task, clean, np.random.default_rng(7), evaluation=evaluation)
    b = degrade(task, clean, np.random.default_rng(7), evaluation=evaluation)
    c = degrade(task, clean, np.random.default_rng(8), evaluation=evaluation)
    assert a.shape == clean.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.allclose(a * 255, np.round(a * 255), atol=1e-3)  # 8-bit levels
    assert np.abs(a - clean).mean() > 1e-3


def test_degrade_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown task"):
        degrade("dehaze", _image(), rng)
    with pytest.raises(ValueError, match="float"):
        degrade("denoise", (_image() * 255).astype(np.uint8), rng)
    with pytest.raises(ValueError, match="RGB"):
        degrade("denoise", _image()[..., 0], rng)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        degrade("denoise", _image() * 2, rng)


def test_gaussian_noise_std_matches_sigma() -> None:
    grey = np.full((96, 96, 3), 0.5, np.float32)
    for sigma in (5 / 255, 25 / 255, 50 / 255):
        noisy, _ = add_noise(grey, np.random.default_rng(1), NoiseParams(sigma))
        assert np.std(noisy - grey) == pytest.approx(sigma, rel=0.05)
    noisy = degrade("denoise", grey, np.random.default_rng(2), evaluation=True)
    assert np.std(noisy - grey) == pytest.approx(EVAL_SIGMA, rel=0.05)


def test_noise_params_in_range_and_poisson_is_signal_dependent() -> None:
    rng = np.random.default_rng(0)
    params = [sample_noise_params(rng) for _ in range(200)]
    assert all(1 / 255 <= p.sigma <= 55 / 255 for p in params)
    shots = [p.shot for p in params if p.shot > 0]
    assert 20 < len(shots) < 120 and all(5e-4 <= s <= 1e-2 for s in shots)
    qualities = [p.jpeg_quality for p in params if p.jpeg_quality is not None]
    assert 20 < len(qualities) < 90 and all(30 <= q <= 95 for q in qualities)
    p = NoiseParams(sigma=2 / 255, shot=0.01)
    dark, bright = np.full((64, 64, 3), 0.1, np.float32), np.full((64, 64, 3), 0.8, np.float32)
    std_dark = np.std(add_noise(dark, np.random.default_rng(3), p)[0] - dark)
    std_bright = np.std(add_noise(bright, np.random.default_rng(3), p)[0] - bright)
    assert std_bright > 2 * std_dark


def test_jpeg_share_leaves_block_artifacts() -> None:
    # 8x8 block boundaries of the JPEG grid: a compressed noisy image has larger jumps across
    # them than inside the blocks; plain noise has none.
    grey = np.full((64, 64, 3), 0.5, np.float32)
    params = NoiseParams(sigma=20 / 255, jpeg_quality=30)
    jpeg, _ = add_noise(grey, np.random.default_rng(4), params)
    plain, _ = add_noise(grey, np.random.default_rng(4), NoiseParams(sigma=20 / 255))

    def boundary_ratio(img: np.ndarray) -> float:
        d = np.abs(np.diff(img[..., 0], axis=1))
        across = d[:, 7::8].mean()
        inside = np.delete(d, np.s_[7::8], axis=1).mean()
        return float(across / inside)

    assert boundary_ratio(jpeg) > 1.2 > boundary_ratio(plain)
    assert np.std(jpeg - grey) < np.std(plain - grey)


def test_blur_kernels_are_normalised_and_centred() -> None:
    rng = np.random.default_rng(0)
    for _ in range(25):
        k = random_motion_kernel(rng)
        size = k.shape[0]
        assert k.shape == (size, size) and size % 2 == 1 and 7 <= size <= 31
        assert k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-5)
        assert np.count_nonzero(k > 1e-3) >= 3  # a path, not a dot
        ys, xs = np.mgrid[0:size, 0:size]
        assert (k * ys).sum() == pytest.approx(size // 2, abs=0.05)
        assert (k * xs).sum() == pytest.approx(size // 2, abs=0.05)
    with pytest.raises(ValueError):
        random_motion_kernel(rng, size=8)


def test_every_kernel_family_is_normalised_centred_and_drawn_by_the_mix() -> None:
    from service.data.degrade.blur import (
        DEFOCUS_RADIUS_RANGE,
        GAUSSIAN_SIGMA_RANGE,
        KERNEL_MIX,
        defocus_kernel,
        gaussian_kernel,
        linear_motion_kernel,
        random_kernel,
    )

    rng = np.random.default_rng(5)
    kernels = [linear_motion_kernel(rng) for _ in range(10)]
    kernels += [defocus_kernel(r) for r in (*DEFOCUS_RADIUS_RANGE, 2.5)]
    kernels += [gaussian_kernel(s) for s in (*GAUSSIAN_SIGMA_RANGE, 1.7)]
    for k in kernels:
        size = k.shape[0]
        assert k.shape == (size, size) and size % 2 == 1 and size <= 31
        assert k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-5)
        ys, xs = np.mgrid[0:size, 0:size]
        assert (k * ys).sum() == pytest.approx(size // 2, abs=0.05)
        assert (k * xs).sum() == pytest.approx(size // 2, abs=0.05)
    line = linear_motion_kernel(np.random.default_rng(6), size=21)
    assert np.count_nonzero(line > 1e-3) < 21 * 4  # a thin streak, not a blob
    # The mix: shake kernels are the only asymmetric ones; about KERNEL_MIX["shake"] of draws.
    draws = [random_kernel(np.random.default_rng(i)) for i in range(200)]
    asymmetric = sum(not np.allclose(k, k[::-1, ::-1], atol=1e-4) for k in draws)
    assert abs(asymmetric / 200 - KERNEL_MIX["shake"]) < 0.12


def test_mild_blur_mix_draws_small_kernels_and_is_a_deblur_variant() -> None:
    from service.data.degrade import check_variant, degrade
    from service.data.degrade.blur import MILD_MIX, TRAINING_MIX, BlurMix, random_kernel

    sizes = [random_kernel(np.random.default_rng(i), MILD_MIX).shape[0] for i in range(100)]
    assert max(sizes) <= 15 and min(sizes) >= 3  # defocus r >= 1 and Gaussians are 3+ px
    full = [random_kernel(np.random.default_rng(i), TRAINING_MIX).shape[0] for i in range(100)]
    assert max(full) > 15
    # the default mix draws exactly what it drew before mixes existed
    assert np.array_equal(random_kernel(np.random.default_rng(7)),
                          random_kernel(np.random.default_rng(7), TRAINING_MIX))
    with pytest.raises(ValueError, match="kernel sizes"):
        BlurMix(kernel_sizes=(5, 41))
    with pytest.raises(ValueError, match="summing to 1"):
        BlurMix(families={"shake": 0.5})
    clean = _image()
    mild = degrade("deblur", clean, np.random.default_rng(0), variant="mild")
    assert mild.shape == clean.shape and not np.array_equal(mild, clean)
    with pytest.raises(ValueError, match="variants: mild, linear"):
        check_variant("deblur", "strong")
    with pytest.raises(ValueError, match="variants: none"):
        degrade("denoise", clean, np.random.default_rng(0), variant="mild")


def test_linear_blur_mix_draws_straight_lines_of_the_documented_lengths() -> None:
    from service.data.degrade import degrade
    from service.data.degrade.blur import LINEAR_MIX, random_kernel

    kernels = [random_kernel(np.random.default_rng(i), LINEAR_MIX) for i in range(60)]
    assert {k.shape[0] for k in kernels} <= set(range(7, 28))
    assert max(k.shape[0] for k in kernels) > 19  # the long end is drawn too
    for k in kernels:
        # a straight line through the centre: point-symmetric, and thin (few pixels carry it)
        assert np.allclose(k, k[::-1, ::-1], atol=1e-4)
        assert (k > 1e-3).sum() <= 3 * k.shape[0]
    clean = _image()
    blurred = degrade("deblur", clean, np.random.default_rng(0), variant="linear")
    assert blurred.shape == clean.shape and not np.array_equal(blurred, clean)


def test_convolve_impulse_response_and_constant() -> None:
    k = random_motion_kernel(np.random.default_rng(3), size=11)
    delta = np.zeros((31, 33, 3), np.float32)
    delta[15, 16] = 1.0
    out = convolve(delta, k)
    assert np.allclose(out[10:21, 11:22, 1], k, atol=1e-6)
    flat = np.full((20, 9, 3), 0.3, np.float32)  # narrower than the kernel: padding holds
    assert np.allclose(convolve(flat, random_motion_kernel(np.random.default_rng(1), 31)), 0.3,
                       atol=1e-5)
    blurred, params = motion_blur(_image(), np.random.default_rng(4))
    assert 0 <= params.noise_sigma <= 2 / 255 and blurred.shape == (48, 56, 3)


def _streak_direction(layer: np.ndarray) -> np.ndarray:
    """Direction (x, y) of least intensity change: the streak axis (structure tensor).

    The layer is smoothed first: raw differences of thin aliased lines bias towards 45 deg.
    """
    g = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    smooth = convolve(layer, np.outer(g, g) / np.outer(g, g).sum())
    gy, gx = np.gradient(smooth.astype(np.float64))
    tensor = np.array([[np.sum(gx * gx), np.sum(gx * gy)], [np.sum(gx * gy), np.sum(gy * gy)]])
    _, vecs = np.linalg.eigh(tensor)
    return vecs[:, 0]


@pytest.mark.parametrize("angle", [-25.0, 0.0, 12.0, 30.0])
def test_rain_streaks_follow_the_angle(angle: float) -> None:
    layer = StreakLayer(angle=angle, length=30, width=1.5, density=0.004, brightness=0.8)
    streaks = streak_layer((96, 96), layer, np.random.default_rng(0))
    a = np.deg2rad(angle)
    expected = np.array([np.sin(a), np.cos(a)])
    assert abs(_streak_direction(streaks) @ expected) > np.cos(np.deg2rad(6))


@pytest.mark.parametrize("mode", ["screen", "additive"])
def test_rain_only_brightens(mode: str) -> None:
    clean = _image()
    layer = StreakLayer(angle=10, length=20, width=2, density=0.01, brightness=0.7)
    rainy, _ = add_rain(clean, np.random.default_rng(0), RainParams((layer,), mode))
    assert np.all(rainy >= clean - 1e-6)
    assert rainy.mean() > clean.mean() + 0.01


def test_haze_raises_dark_channel_and_params_in_range() -> None:
    clean = _image()
    assert _dark_channel(add_haze(clean, 0.7, 0.9)) > _dark_channel(clean) + 0.05
    rng = np.random.default_rng(0)
    draws = [sample_rain_params(rng) for _ in range(100)]
    hazy = [p for p in draws if p.transmission is not None]
    assert 10 < len(hazy) < 60
    assert {p.composite for p in draws} == {"screen", "additive"}
    for p in draws:
        assert 1 <= len(p.layers) <= 3
        lengths = [layer.length for layer in p.layers]
        assert lengths == sorted(lengths, reverse=True)
        for layer in p.layers:
            assert -30 <= layer.angle <= 30 and 8 <= layer.length <= 40
            assert 0.6 <= layer.width <= 3 and 0.15 <= layer.brightness <= 0.9
            assert 0 < layer.density * layer.length * layer.width <= 0.25
    for p in hazy:
        rainy, _ = add_rain(clean, np.random.default_rng(1), p)
        assert _dark_channel(rainy) > _dark_channel(clean)


def test_rain_regimes_span_light_to_heavy() -> None:
    """Light rain must leave far more of the photo intact than heavy rain (PSNR vs clean)."""
    clean = _image(96, 96)

    def mean_psnr(regime: str) -> float:
        rng = np.random.default_rng(3)
        values = []
        for _ in range(12):
            rainy, params = add_rain(clean, rng, sample_rain_params(rng, regime))
            assert all(REGIMES[regime].width[0] <= layer.width <= REGIMES[regime].width[1]
                       for layer in params.layers)
            values.append(10 * np.log10(1 / np.mean((rainy - clean) ** 2)))
        return float(np.mean(values))

    light, heavy = mean_psnr("light"), mean_psnr("heavy")
    assert light > heavy + 5
    with pytest.raises(ValueError, match="unknown rain regime"):
        sample_rain_params(np.random.default_rng(0), "drizzle")


# --- datasets -------------------------------------------------------------------------------

def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _paired_root(tmp_path: Path, names: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        target = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
        _write_png(tmp_path / "target" / name, target)
        _write_png(tmp_path / "input" / name, 255 - target)  # input + target == 1 everywhere
    return tmp_path


def test_paired_dataset_crops_the_same_region(tmp_path: Path) -> None:
    ds = PairedFolderDataset(_paired_root(tmp_path), patch_size=16, augment=True, seed=3)
    assert len(ds) == 2 and ds.names == ["a.png", "b.png"]
    x, y = ds[0]
    assert x.shape == y.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x + y, torch.ones_like(x), atol=1e-6)
    again = PairedFolderDataset(tmp_path, patch_size=16, augment=True, seed=3)[0]
    assert torch.equal(again[0], x)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x)
    ds.set_patch_size(64)  # larger than the image: reflect-padded, still aligned
    x, y = ds[1]
    assert x.shape == (3, 64, 64)
    assert torch.allclose(x + y, torch.ones_like(x), atol=1e-6)
    with pytest.raises(ValueError):
        ds.set_patch_size(0)


def test_paired_dataset_reports_bad_folders(tmp_path: Path) -> None:
    root = _paired_root(tmp_path / "bad")
    _write_png(root / "input" / "extra.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="only in input"):
        PairedFolderDataset(root, 8)
    (tmp_path / "empty" / "input").mkdir(parents=True)
    (tmp_path / "empty" / "target").mkdir()
    with pytest.raises(ValueError, match="no images"):
        PairedFolderDataset(tmp_path / "empty", 8)
    with pytest.raises(FileNotFoundError):
        PairedFolderDataset(tmp_path / "missing", 8)


@pytest.fixture
def clean_dir(tmp_path: Path) -> Path:
    for i in range(3):
        _write_png(tmp_path / "clean" / f"img{i}.png",
                   (_image(60 + 10 * i, 70, seed=i) * 255).round().astype(np.uint8))
    return tmp_path / "clean"


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_dataset_is_deterministic_per_index(clean_dir: Path, task: str) -> None:
    ds = SyntheticPairDataset(clean_dir, task, patch_size=24, length=10, seed=5)
    other = SyntheticPairDataset(clean_dir, task, patch_size=24, length=10, seed=5)
    deg, clean = ds[3]
    assert deg.shape == clean.shape == (3, 24, 24) and deg.dtype == torch.float32
    assert deg.min() >= 0 and deg.max() <= 1 and clean.min() >= 0 and clean.max() <= 1
    assert torch.equal(other[3][0], deg) and torch.equal(other[3][1], clean)
    assert not torch.equal(ds[4][1], clean)
    ds.set_patch_size(32)
    assert ds[0][0].shape == (3, 32, 32)
    with pytest.raises(IndexError):
        ds[10]


def test_clean_share_gives_identity_pairs(clean_dir: Path) -> None:
    # denoise: a noisy crop never equals its clean one, so every identical pair is a clean one
    ds = SyntheticPairDataset(clean_dir, "denoise", patch_size=16, length=200, seed=3,
                              clean_share=0.25)
    identical = sum(torch.equal(*ds[i]) for i in range(200))
    assert 30 <= identical <= 70  # binomial(200, 0.25): mean 50, sd 6
    plain = SyntheticPairDataset(clean_dir, "denoise", patch_size=16, length=50, seed=3)
    assert sum(torch.equal(*plain[i]) for i in range(50)) == 0
    with pytest.raises(ValueError, match="clean_share"):
        SyntheticPairDataset(clean_dir, "derain", patch_size=16, length=5, clean_share=1.0)


def test_crop_detail_measures_texture() -> None:
    flat = np.full((16, 16, 3), 128, np.uint8)
    checker = ((np.indices((16, 16)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    assert crop_detail(flat) == 0.0
    assert crop_detail(checker) == pytest.approx(1.0)
    assert crop_detail(checker.astype(np.float32) / 255) == pytest.approx(1.0)
    assert crop_detail(np.zeros((1, 1, 3), np.uint8)) == 0.0


def test_detailed_crop_redraws_flat_crops() -> None:
    flat, busy = np.zeros((8, 8, 3), np.float32), np.indices((8, 8)).sum(0)[..., None] % 2 * 0.1
    busy = busy.repeat(3, 2).astype(np.float32)
    draws: list[np.ndarray] = []

    def draw_from(seq: list[np.ndarray]):
        it = iter(seq)

        def draw() -> np.ndarray:
            draws.append(next(it))
            return draws[-1]
        return draw

    assert detailed_crop(draw_from([flat, busy]), 0.0) is flat and len(draws) == 1
    draws.clear()
    assert detailed_crop(draw_from([flat, flat, busy, flat]), 0.05) is busy and len(draws) == 3
    draws.clear()  # nothing reaches the floor: the busiest of DETAIL_TRIES draws
    half = busy * 0.5
    out = detailed_crop(draw_from([flat, half] + [flat] * (DETAIL_TRIES - 2)), 0.5)
    assert out is half and len(draws) == DETAIL_TRIES
    draws.clear()  # the border is not judged: detail only at the edge does not count
    framed = flat.copy()
    framed[0] = 1.0
    assert detailed_crop(draw_from([framed, busy]), 0.05, border=1) is busy


@pytest.fixture
def half_flat_dir(tmp_path: Path) -> Path:
    """One photo whose left half is flat grey and right half noise."""
    img = np.full((96, 192, 3), 120, np.uint8)
    img[:, 96:] = np.random.default_rng(0).integers(40, 200, (96, 96, 3), dtype=np.uint8)
    _write_png(tmp_path / "half" / "img.png", img)
    return tmp_path / "half"


def test_min_detail_keeps_training_crops_off_flat_content(half_flat_dir: Path) -> None:
    def flat_share(**kw: float) -> float:
        ds = SyntheticPairDataset(half_flat_dir, "denoise", patch_size=16, length=40, seed=2,
                                  augment=False, **kw)
        return np.mean([crop_detail(ds[i][1].permute(1, 2, 0).numpy()) < 0.02 for i in range(40)])

    assert flat_share() > 0.2
    assert flat_share(min_detail=0.02) < 0.05
    with pytest.raises(ValueError, match="min_detail"):
        SyntheticPairDataset(half_flat_dir, "denoise", 16, 4, min_detail=1.0)


def test_fixed_validation_set_is_repeatable(clean_dir: Path) -> None:
    a = fixed_validation_set(clean_dir, "denoise", 16, count=4, seed=1)
    b = fixed_validation_set(clean_dir, "denoise", 16, count=4, seed=1)
    c = fixed_validation_set(clean_dir, "denoise", 16, count=4, seed=2)
    assert len(a) == 4
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    assert not torch.equal(a[0][0], c[0][0])
    residual = torch.stack([d - cl for d, cl in a])
    assert residual.std().item() == pytest.approx(EVAL_SIGMA, rel=0.15)


def test_synthetic_dataset_errors(tmp_path: Path, clean_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        SyntheticPairDataset(clean_dir, "dehaze", 16, 4)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no clean images"):
        SyntheticPairDataset(tmp_path / "none", "denoise", 16, 4)


# --- pool builder (fake package trees, no apt) ------------------------------------------------

def _fake_fetch(drop: tuple[str, ...] = ()):
    """A fetch that writes small images at the allow-listed places instead of running apt:
    plain files, members of Qt resource bundles and raw arrays, as each entry says."""

    def fetch(names, workdir: Path) -> list[PackageSource]:
        sources = []
        for name in names:
            root = workdir / "root" / name
            bundles: dict[str, dict[str, bytes]] = {}
            for image_id, entry in sorted(ALLOW_LIST[name].items()):
                photo = as_photo(entry)
                if photo.source in drop:
                    continue
                seed = zlib.crc32(image_id.encode())
                if photo.member is not None:
                    buf = io.BytesIO()
                    Image.fromarray(_fake_pixels(seed)).save(buf, format="WEBP", lossless=True,
                                                             method=0)
                    bundles.setdefault(photo.path, {})[photo.member] = buf.getvalue()
                elif photo.array is not None:
                    _write_array(root / photo.path, photo.array, seed)
                else:
                    _write_png(root / photo.path, _fake_pixels(seed))
            for rel, members in bundles.items():
                write_rcc(root / rel, members, compress={sorted(members)[0]})
            (root / "usr/share/wallpapers/Unlisted.jpg").parent.mkdir(parents=True, exist_ok=True)
            sources.append(PackageSource(name, "1.0-1", root, f"{name}_1.0-1_all.deb"))
        return sources

    return fetch


def _fake_pixels(seed: int, h: int = 120, w: int = 180) -> np.ndarray:
    """Smooth, and unlike for every seed (so no two fake photos look like the same one)."""
    coarse = np.random.default_rng(seed).integers(30, 225, (4, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def _write_array(path: Path, fmt: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt.startswith("npz:"):
        grey = _fake_pixels(seed).mean(axis=2).astype(np.uint8)
        np.savez(path, **{fmt[4:]: grey})
    else:
        h, w, c = (int(v) for v in fmt.split(":")[1].split("x"))
        path.write_bytes(bz2.compress(_fake_pixels(seed, h, w)[..., :c].tobytes()))


def _entries() -> list[tuple[str, Photo]]:
    return [(i, as_photo(e)) for files in ALLOW_LIST.values() for i, e in files.items()]


def test_build_pool_on_a_fake_tree(tmp_path: Path) -> None:
    dropped = ALLOW_LIST["mate-backgrounds"]["mate-wood"]
    out = tmp_path / "pool"
    manifest = build_pool(out, short_side=80, holdout_fraction=0.1, seed=0,
                          workdir=tmp_path / "work", fetch=_fake_fetch((dropped,)),
                          check_evaluation=False)
    n = len(_entries()) - 1
    train, val = sorted((out / "train").iterdir()), sorted((out / "val").iterdir())
    assert len(train) + len(val) == n and len(val) == round(0.1 * n)
    assert manifest["missing"] == [f"mate-backgrounds:{dropped}"]
    assert {p["name"] for p in manifest["packages"]} == set(ALLOW_LIST)
    assert all(p["version"] == "1.0-1" for p in manifest["packages"])
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    photos = dict(_entries())
    kinds = {"member": 0, "array": 0, "plain": 0}
    for entry in manifest["images"]:
        photo = photos[entry["id"]]
        assert entry["source"] == photo.source
        if photo.array and photo.array.startswith("bz2-raw:"):  # keeps its declared shape
            h, w, _ = (int(v) for v in photo.array.split(":")[1].split("x"))
            assert entry["source_size"] == [w, h] and min(entry["size"]) == 80
        else:
            assert entry["source_size"] == [180, 120] and entry["size"] == [120, 80]
        assert Image.open(out / entry["files"][0]).size == tuple(entry["size"])
        assert Image.open(out / entry["files"][0]).mode == "RGB"
        kinds["member" if photo.member else "array" if photo.array else "plain"] += 1
    assert all(kinds.values())  # every way of storing a photo went through the build
    assert set(manifest["split"]["val"]) == {p.stem for p in val}
    assert manifest["totals"]["train"]["pixels"] == sum(
        e["size"][0] * e["size"][1] for e in manifest["images"] if e["split"] == "train")
    with pytest.raises(PoolError, match="already holds"):
        build_pool(out, workdir=tmp_path / "w2", fetch=_fake_fetch(), check_evaluation=False)
    again = build_pool(out, ["lomiri-wallpapers-20.04"], short_side=80, seed=0, force=True,
                       workdir=tmp_path / "w3", fetch=_fake_fetch(), check_evaluation=False)
    assert again["split"] == {"train": ["lomiri-kleiber"], "val": []}
    assert [p.name for p in (out / "train").iterdir()] == ["lomiri-kleiber.png"]
    assert not list((out / "val").iterdir())  # the earlier pool was cleared


def test_allow_list_entries_are_well_formed() -> None:
    entries = _entries()
    ids = [i for i, _ in entries]
    assert len(ids) == len(set(ids)) and len(ids) >= 150
    assert all(ALLOW_LIST[p] for p in DEFAULT_PACKAGES) and set(DEFAULT_PACKAGES) == set(ALLOW_LIST)
    for pkg in ALLOW_LIST:
        assert not pkg.startswith("pypi:") or wheels.parse_spec(pkg)[1]  # pinned versions
    for image_id, photo in entries:
        assert image_id == image_id.lower() and " " not in image_id
        assert not photo.path.startswith("/")
        assert photo.member is None or photo.path.endswith(".rcc")
        assert Path(photo.member or photo.path).suffix.lower() in (*IMAGE_SUFFIXES, ".jp2", "") \
            or photo.array is not None


def test_short_side_cap_and_duplicates(tmp_path: Path) -> None:
    """A per-photo cap shrinks below the pool size; the same photo twice stops the build."""
    root = tmp_path / "pkg"
    _write_png(root / "a.png", _fake_pixels(1, 300, 450))
    _write_png(root / "b.png", _fake_pixels(2, 300, 450))
    src = PackageSource("p", "1", root, "installed")
    allow = {"p": {"p-a": Photo("a.png", short_side=100), "p-b": "b.png"}}
    cands, missing = select_images([src], allow)
    assert [c.id for c in cands] == ["p-a", "p-b"] and not missing
    manifest = pool_mod.write_pool(cands, [src], tmp_path / "out", short_side=200,
                                   split={"p-a": "train", "p-b": "val"},
                                   check_evaluation=False)
    assert [e["size"] for e in manifest["images"]] == [[150, 100], [300, 200]]
    # b.png again at another size (as when two packages ship one wallpaper)
    Image.fromarray(_fake_pixels(2, 300, 450)).resize((300, 200)).save(root / "c.jpg")
    allow["p"]["p-c"] = "c.jpg"
    cands, _ = select_images([src], allow)
    with pytest.raises(PoolError, match="p-c and p-b are the same photo"):
        pool_mod.write_pool(cands, [src], tmp_path / "out2",
                            split={c.id: "train" for c in cands}, check_evaluation=False)


def test_missing_bundle_member_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    buf = io.BytesIO()
    Image.fromarray(_fake_pixels(3)).save(buf, format="PNG")
    write_rcc(root / "b.rcc", {"/x/one.png": buf.getvalue()})
    src = PackageSource("p", "1", root, "installed")
    allow = {"p": {"p-one": Photo("b.rcc", member="/x/one.png"),
                   "p-two": Photo("b.rcc", member="/x/two.png"),
                   "p-gone": Photo("gone.rcc", member="/x/one.png")}}
    cands, missing = select_images([src], allow)
    assert [c.id for c in cands] == ["p-one"]
    assert missing == ["p:gone.rcc::/x/one.png", "p:b.rcc::/x/two.png"]
    manifest = pool_mod.write_pool(cands, [src], tmp_path / "out", split={"p-one": "train"},
                                   check_evaluation=False)
    assert manifest["images"][0]["source"] == "b.rcc::/x/one.png"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out/train/p-one.png")),
                          _fake_pixels(3))


def test_build_pool_tiles_and_limits(tmp_path: Path) -> None:
    manifest = build_pool(tmp_path / "p", ["mate-backgrounds"], short_side=80, patch=32,
                          max_images=5, holdout_fraction=0.2, seed=1, workdir=tmp_path / "w",
                          fetch=_fake_fetch(), check_evaluation=False)
    assert [p["name"] for p in manifest["packages"]] == ["mate-backgrounds"]
    assert len(manifest["images"]) == 5 and len(manifest["split"]["val"]) == 1
    assert all(len(e["files"]) == 2 * 3 for e in manifest["images"])  # 120x80 -> 3x2 tiles
    first = manifest["images"][0]["files"]
    assert all(Image.open(tmp_path / "p" / f).size == (32, 32) for f in first)
    with pytest.raises(PoolError, match="no allow-list"):
        build_pool(tmp_path / "q", ["gnome-backgrounds"], workdir=tmp_path / "w",
                   fetch=_fake_fetch())


def test_split_is_seeded_by_image() -> None:
    ids = [f"img{i}" for i in range(20)]
    a = split_images(ids, 0.1, seed=0)
    assert split_images(list(reversed(ids)), 0.1, seed=0) == a  # order-independent
    assert split_images(ids, 0.1, seed=1) != a
    assert sum(v == "val" for v in a.values()) == 2
    assert sum(v == "val" for v in split_images(ids[:3], 0.1, 0).values()) == 1
    assert set(split_images(ids[:1], 0.5, 0).values()) == {"train"}
    assert len(split_images(ids, 0.0, 0, max_images=4)) == 4
    with pytest.raises(ValueError):
        split_images(ids, 1.0, 0)


def test_pool_never_takes_evaluation_images(tmp_path: Path) -> None:
    assert not any(is_evaluation_name(n) for i, photo in _entries() for n in (i, *photo.names()))
    assert is_evaluation_name("x/astronaut.png")
    assert is_evaluation_name("site-packages/skimage/data/a.png")
    src = PackageSource("mate-backgrounds", "1", tmp_path, "installed")
    with pytest.raises(PoolError, match="evaluation"):
        select_images([src], {"mate-backgrounds": {"mate-x": "data/coffee.png"}})
    bundled = PackageSource("p", "1", tmp_path, "installed")
    with pytest.raises(PoolError, match="evaluation"):  # also a member of a bundle
        select_images([bundled], {"p": {"p-x": Photo("a.rcc", member="/img/astronaut.png")}})


def test_pool_refuses_an_evaluation_photo_by_content(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    from service.data.evaluation import evaluation_images

    images = evaluation_images()
    assert tuple(images) == EVALUATION_NAMES
    for img in images.values():
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.float32
        assert img.min() >= 0 and img.max() <= 1
    disguised = tmp_path / "photo.jpg"
    Image.fromarray((images["coffee"] * 255).astype(np.uint8)).resize((300, 200)).save(disguised)
    cand = Candidate("mate-photo", "mate-backgrounds", "photo.jpg", disguised)
    src = PackageSource("mate-backgrounds", "1", tmp_path, "installed")
    with pytest.raises(PoolError, match="coffee"):
        pool_mod.write_pool([cand], [src], tmp_path / "out", split={"mate-photo": "train"})


# --- CLI ------------------------------------------------------------------------------------

def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    data_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_build_and_degrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(pool_mod, "fetch_packages", _fake_fetch())
    monkeypatch.setattr(pool_mod, "_evaluation_check", lambda: None)
    args = _parse(["data", "build", "--output", str(tmp_path / "pool"), "--short-side", "64",
                   "--packages", "mate-backgrounds", "--max-images", "3"])
    assert args.run(args) == 0
    assert "mate-backgrounds 1.0-1" in capsys.readouterr().out
    assert args.run(args) == 2  # exists, no --force
    assert "already holds" in capsys.readouterr().err
    src = next((tmp_path / "pool" / "train").iterdir())
    args = _parse(["data", "degrade", str(src), "--task", "derain", "--output",
                   str(tmp_path / "deg"), "--seed", "3"])
    assert args.run(args) == 0
    out = tmp_path / "deg" / f"{src.stem}_derain.png"
    assert Image.open(out).size == Image.open(src).size
    args = _parse(["data", "degrade", str(src), "--task", "deblur", "--degradation", "mild",
                   "--output", str(tmp_path / "mild")])
    assert args.run(args) == 0 and (tmp_path / "mild" / f"{src.stem}_deblur.png").is_file()
    args = _parse(["data", "degrade", str(src), "--task", "derain", "--degradation", "mild",
                   "--output", str(tmp_path / "bad")])
    assert args.run(args) == 2 and "variants: none" in capsys.readouterr().err
