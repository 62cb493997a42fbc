"""Synthetic blur for training the deblurring network: mostly camera shake, plus the other blurs
photos meet.

Kernel families, drawn per image with the probabilities of ``KERNEL_MIX``:

* **camera shake** (0.45): see below;
* **linear motion** (0.30): a straight path of length ``K - 2`` px at a uniform angle, even
  dwell, rasterised like a shake path (a panning camera or a moving subject);
* **defocus** (0.15): a uniform disk of radius in ``DEFOCUS_RADIUS_RANGE`` px with an
  anti-aliased rim (an out-of-focus lens);
* **Gaussian** (0.10): std in ``GAUSSIAN_SIGMA_RANGE`` px (soft optics, upscaled photos).

A network that only ever saw shake trajectories leaves a straight streak or a soft focus alone.

The shake kernel is the image of a random camera trajectory (after Boracchi & Foi 2012, the model
DeblurGAN uses): a 2-D path with momentum whose heading drifts smoothly, takes occasional
abrupt turns (hand jerks) and is pulled back towards its start (the photographer
compensating). Speed varies smoothly along the path, so some parts of the kernel are
brighter than others, as with a real exposure.

Ranges (training):

* kernel size ``K``: an odd integer in [7, 31] px; the path is scaled so its farthest point
  from the kernel's centre of mass lies ``K // 2 - 1`` px away (it fills the kernel);
* the path is rasterised with sub-pixel accuracy (bilinear splatting of densely resampled
  points), normalised to sum 1 and **centred on its centre of mass**, so the blurred image is
  not shifted relative to the sharp one (a shift would have to be "learned" as restoration);
* additive Gaussian noise with std in [0, 2] / 255 after blurring, as real blurry frames are
  never noise-free.

``MILD_MIX`` draws the same families from the small end of these ranges (kernels 7–15 px, disks of
radius 1–3, Gaussians of std 0.5–1.5): a curriculum's first stage, where a network can learn what
blur looks like before it has to undo 31-px shakes. ``LINEAR_MIX`` draws straight-line motion
only, 5–25 px long (kernels 7–27): the one family whose blur is fixed by two numbers (length and
angle), so a small network can learn to undo it before the blind mix; also the family of the
deblurring target's main cells.

The blur is uniform (one kernel per image), unlike GoPro's dynamic scenes, but camera shake
dominates those too. Convolution is done with numpy FFTs on a reflect-padded image (no SciPy
dependency); the padding keeps borders free of wrap-around.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

KERNEL_SIZE_RANGE = (7, 31)
NOISE_SIGMA_RANGE = (0.0, 2.0 / 255.0)
DEFOCUS_RADIUS_RANGE = (1.0, 6.0)
GAUSSIAN_SIGMA_RANGE = (0.5, 3.0)
KERNEL_MIX = {"shake": 0.45, "linear": 0.30, "defocus": 0.15, "gaussian": 0.10}


@dataclass(frozen=True)
class BlurMix:
    """Where one training kernel is drawn from: family probabilities and each family's range
    (sub-ranges of the documented ones)."""

    families: Mapping[str, float] = field(default_factory=lambda: dict(KERNEL_MIX))
    kernel_sizes: tuple[int, int] = KERNEL_SIZE_RANGE
    defocus_radii: tuple[float, float] = DEFOCUS_RADIUS_RANGE
    gaussian_sigmas: tuple[float, float] = GAUSSIAN_SIGMA_RANGE

    def __post_init__(self) -> None:
        for name, (lo, hi), (min_, max_) in (
                ("kernel sizes", self.kernel_sizes, KERNEL_SIZE_RANGE),
                ("defocus radii", self.defocus_radii, DEFOCUS_RADIUS_RANGE),
                ("Gaussian sigmas", self.gaussian_sigmas, GAUSSIAN_SIGMA_RANGE)):
            if not min_ <= lo <= hi <= max_:
                raise ValueError(f"{name} {lo}..{hi} outside [{min_}, {max_}]")
        if set(self.families) - set(KERNEL_MIX) or abs(sum(self.families.values()) - 1) > 1e-9:
            raise ValueError(f"families must be among {list(KERNEL_MIX)} with probabilities "
                             f"summing to 1, got {dict(self.families)}")


TRAINING_MIX = BlurMix()
MILD_MIX = BlurMix(kernel_sizes=(7, 15), defocus_radii=(1.0, 3.0), gaussian_sigmas=(0.5, 1.5))
LINEAR_MIX = BlurMix(families={"linear": 1.0}, kernel_sizes=(7, 27))


@dataclass(frozen=True, eq=False)
class BlurParams:
    """``kernel``: (K, K) float32, non-negative, sums to 1; ``noise_sigma`` in [0, 1] units."""

    kernel: np.ndarray = field(repr=False)
    noise_sigma: float

    @property
    def size(self) -> int:
        return int(self.kernel.shape[0])


def _trajectory(rng: np.random.Generator, steps: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A random 2-D path (complex positions) and its per-point dwell weights."""
    heading = rng.uniform(0.0, 2.0 * np.pi)
    wobble = rng.uniform(0.05, 0.35)  # std of the per-step heading change (rad)
    jerk_probability = rng.uniform(0.0, 0.05)
    centripetal = rng.uniform(0.0, 0.08)
    pos = np.zeros(steps, dtype=np.complex128)
    vel = np.exp(1j * heading)
    for t in range(1, steps):
        turn = rng.normal(0.0, wobble)
        if rng.random() < jerk_probability:
            turn += rng.uniform(0.5, 1.0) * np.pi * rng.choice((-1.0, 1.0))
        vel = vel * np.exp(1j * turn) - centripetal * pos[t - 1] / max(abs(pos[t - 1]), 1.0)
        vel /= max(abs(vel), 1e-9)
        pos[t] = pos[t - 1] + vel
    # Smoothly varying speed -> the time spent near each point (its brightness) varies.
    log_speed = np.cumsum(rng.normal(0.0, 0.15, steps))
    dwell = np.exp(-(log_speed - log_speed.mean()))
    return pos, dwell / dwell.sum()


def _rasterise(points: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Bilinear splatting of weighted sub-pixel points (x + iy, centre 0) into a K x K grid."""
    c = size // 2
    x = points.real + c
    y = points.imag + c
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = x - x0
    fy = y - y0
    kernel = np.zeros((size, size), dtype=np.float64)
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
        np.add.at(kernel, (yy[ok], xx[ok]), (w * weights)[ok])
    return kernel


def _kernel_size(rng: np.random.Generator, size: int | None,
                 sizes: tuple[int, int] = KERNEL_SIZE_RANGE) -> int:
    """``size`` checked (odd, in ``KERNEL_SIZE_RANGE``), or drawn from ``sizes`` when None."""
    lo, hi = KERNEL_SIZE_RANGE
    if size is None:
        size = 2 * int(rng.integers(sizes[0] // 2, sizes[1] // 2 + 1)) + 1
    if size % 2 == 0 or not lo <= size <= hi:
        raise ValueError(f"kernel size must be odd and in [{lo}, {hi}], got {size}")
    return size


def random_motion_kernel(rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """A normalised (size, size) camera-shake kernel; ``size`` odd in [7, 31] (random if None)."""
    size = _kernel_size(rng, size)
    pos, dwell = _trajectory(rng)
    # Resample densely (>= 4 points per pixel of path) so the raster has no gaps.
    seg = np.abs(np.diff(pos))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    radius = size // 2 - 1
    dense_n = int(np.ceil(arc[-1] * radius * 8 / max(np.abs(pos).max(), 1.0))) + len(pos)
    s = np.linspace(0.0, arc[-1], dense_n)
    dense = np.interp(s, arc, pos.real) + 1j * np.interp(s, arc, pos.imag)
    w = np.interp(s, arc, dwell * len(pos))
    w /= w.sum()
    dense -= np.sum(dense * w)  # centre of mass -> kernel centre: no image shift
    dense *= radius / max(np.abs(dense).max(), 1e-9)
    kernel = _rasterise(dense, w, size)
    return (kernel / kernel.sum()).astype(np.float32)


def linear_motion_kernel(rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """A normalised straight-streak kernel of length ``size - 2`` at a random angle."""
    size = _kernel_size(rng, size)
    half = (size - 2) / 2.0
    n = int(np.ceil(8 * size))
    points = np.linspace(-half, half, n) * np.exp(1j * rng.uniform(0.0, np.pi))
    kernel = _rasterise(points, np.full(n, 1.0 / n), size)
    return (kernel / kernel.sum()).astype(np.float32)


def defocus_kernel(radius: float) -> np.ndarray:
    """A normalised disk of ``radius`` px, its rim anti-aliased by 4x4 supersampling."""
    r = int(np.ceil(radius))
    size = 2 * r + 1
    sub = (np.arange(size * 4) + 0.5) / 4.0 - size / 2.0
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    inside = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    kernel = inside.reshape(size, 4, size, 4).mean(axis=(1, 3))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised isotropic Gaussian of std ``sigma`` px, radius ceil(3 sigma)."""
    r = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    kernel = np.outer(g, g)
    return (kernel / kernel.sum()).astype(np.float32)


def random_kernel(rng: np.random.Generator, mix: BlurMix = TRAINING_MIX) -> np.ndarray:
    """A kernel of ``mix``: shake, linear motion, defocus or Gaussian."""
    names = list(mix.families)
    family = names[int(rng.choice(len(names), p=np.array(list(mix.families.values()))))]
    if family == "shake":
        return random_motion_kernel(rng, _kernel_size(rng, None, mix.kernel_sizes))
    if family == "linear":
        return linear_motion_kernel(rng, _kernel_size(rng, None, mix.kernel_sizes))
    if family == "defocus":
        return defocus_kernel(float(rng.uniform(*mix.defocus_radii)))
    return gaussian_kernel(float(rng.uniform(*mix.gaussian_sigmas)))


def sample_blur_params(rng: np.random.Generator, mix: BlurMix = TRAINING_MIX) -> BlurParams:
    """Draw a kernel of ``mix`` and a noise level from the documented training ranges."""
    kernel = random_kernel(rng, mix)
    return BlurParams(kernel=kernel, noise_sigma=float(rng.uniform(*NOISE_SIGMA_RANGE)))


def sample_shake_params(rng: np.random.Generator) -> BlurParams:
    """A camera-shake kernel and a noise level: the synthetic evaluation set's blur, kept apart
    from the training mix so its numbers stay comparable between models and runs."""
    kernel = random_motion_kernel(rng)
    return BlurParams(kernel=kernel, noise_sigma=float(rng.uniform(*NOISE_SIGMA_RANGE)))


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of (H, W, C) or (H, W) with an odd (K, K) kernel; same size out.

    Reflect padding by K // 2 (repeated reflection for tiny images), then circular
    FFT convolution of the padded image: wrap-around only touches the padding, which is cut.
    """
    img = np.asarray(image, dtype=np.float32)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[..., None]
    k = np.asarray(kernel, dtype=np.float64)
    r = k.shape[0] // 2
    h, w = img.shape[:2]
    mode = "reflect" if min(h, w) > 1 else "edge"
    padded = np.pad(img, ((r, r), (r, r), (0, 0)), mode=mode)
    ph, pw = padded.shape[:2]
    embed = np.zeros((ph, pw), dtype=np.float64)
    embed[: k.shape[0], : k.shape[1]] = k
    embed = np.roll(embed, (-r, -r), axis=(0, 1))  # kernel centre at the origin
    spec = np.fft.rfft2(padded, axes=(0, 1)) * np.fft.rfft2(embed)[..., None]
    out = np.fft.irfft2(spec, s=(ph, pw), axes=(0, 1))[r : r + h, r : r + w]
    out = out.astype(np.float32)
    return out[..., 0] if squeeze else out


def motion_blur(
    clean: np.ndarray, rng: np.random.Generator, params: BlurParams | None = None,
    mix: BlurMix = TRAINING_MIX,
) -> tuple[np.ndarray, BlurParams]:
    """Return ``(blurred, params)``: blur with a random kernel of ``mix`` (or ``params``'s),
    then slight noise."""
    if params is None:
        params = sample_blur_params(rng, mix)
    out = convolve(clean, params.kernel)
    if params.noise_sigma > 0:
        noise = rng.standard_normal(out.shape, dtype=np.float32)
        out = out + noise * np.float32(params.noise_sigma)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False), params
