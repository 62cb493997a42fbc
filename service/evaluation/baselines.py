"""Classical, training-free restorers: the floor a learned model has to beat.

Each is ``f(degraded) -> restored`` on float32 (H, W, 3) in [0, 1]. Parameters were picked by
small sweeps on the synthetic evaluation set (``service.evaluation.pairs.synthetic_pairs``:
scikit-image's six sample photos, seed 0, 256 x 256 centre crops), by mean RGB PSNR:

* **denoise** (AWGN sigma = 25): OpenCV's non-local means (``fastNlMeansDenoisingColored``,
  7 x 7 patches, 21 x 21 search) with ``h = hColor = 17`` (8-bit units). Sweep of h = hColor:
  10 / 13 / 15 / 16 / 17 / 18 -> 24.16 / 25.97 / 26.52 / 26.63 / 26.63 / 26.56 dB (input
  20.62); the optimum is flat around 16-17, above the h ~ 10-15 usually quoted for sigma 25,
  because OpenCV's h scales a patch distance in CIELAB. Needs ``opencv-python-headless``,
  imported only when called.
* **derain**: a 1-row x 7-column median (``median_derain``). Streaks are thin (1-3 px) and
  within 30 degrees of vertical, so a horizontal window outvotes them while leaving horizontal
  edges alone. It was the best of the candidates in ``DERAIN_CANDIDATES``: median 1 x 7 19.02,
  median 3 x 7 18.98, median 5 x 5 18.50, self-guided filter (best of r 2-8, eps 0.005-0.04:
  r = 4, eps = 0.02) 18.18 dB (input 17.51); 1 x 7 also wins at seeds 1 and 2.
* **deblur**: unsharp masking, ``x + amount (x - G_sigma * x)``, sigma = 2, amount = 0.5.
  On camera-shake blur *no* setting raised PSNR (sigma 0.5-3 x amount 0.5-2: -0.02 to
  -1.3 dB; this one -0.08 dB, input 22.05): sharpening cannot undo a motion kernel and
  amplifies the ghosting and noise. It is kept as the textbook classical reference, so the
  degraded input is the stronger floor for deblurring.
* **sr** (×4): Lanczos upscaling (``service.evaluation.upscale``); the input row of an SR table
  is the LR image upscaled bicubically, the papers' convention, so both classical resamplers
  are in every table.

Everything except NLM is plain numpy (reflect padding at the borders).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Restorer = Callable[[np.ndarray], np.ndarray]

NLM_H = 17.0
NLM_TEMPLATE = 7
NLM_SEARCH = 21
MEDIAN_SHAPE = (1, 7)  # (rows, columns)
GUIDED_RADIUS = 4
GUIDED_EPS = 0.02
UNSHARP_SIGMA = 2.0
UNSHARP_AMOUNT = 0.5


def _check(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _pad(image: np.ndarray, ry: int, rx: int) -> np.ndarray:
    """Reflect-pad the two spatial axes (edge-pad images too small to reflect)."""
    widths = ((ry, ry), (rx, rx)) + ((0, 0),) * (image.ndim - 2)
    mode = "reflect" if min(image.shape[:2]) > max(ry, rx) else "edge"
    return np.pad(image, widths, mode=mode)


# --- denoise -----------------------------------------------------------------------------


def nlm_denoise(
    degraded: np.ndarray, h: float = NLM_H, template: int = NLM_TEMPLATE, search: int = NLM_SEARCH
) -> np.ndarray:
    """Non-local means (Buades et al.) via OpenCV, on the 8-bit image as OpenCV expects.

    OpenCV filters in CIELAB and reads its input as BGR, hence the channel flips.
    """
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the denoising baseline needs OpenCV: pip install opencv-python-headless"
        ) from exc
    arr = _check(degraded)
    bgr = np.ascontiguousarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)[..., ::-1])
    out = cv2.fastNlMeansDenoisingColored(bgr, None, float(h), float(h), template, search)
    return (out[..., ::-1].astype(np.float32) / np.float32(255.0)).copy()


# --- derain ------------------------------------------------------------------------------


def median_filter(image: np.ndarray, shape: tuple[int, int] = MEDIAN_SHAPE) -> np.ndarray:
    """Per-channel median over an odd (rows, columns) window, reflect-padded."""
    kh, kw = shape
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"median window must be odd in both directions, got {shape}")
    arr = _check(image)
    padded = _pad(arr, kh // 2, kw // 2)
    out = np.empty_like(arr)
    for c in range(3):  # one channel at a time bounds the window view's temporary copy
        windows = sliding_window_view(padded[..., c], (kh, kw))
        out[..., c] = np.median(windows.reshape(*windows.shape[:2], -1), axis=-1)
    return out


def median_derain(degraded: np.ndarray) -> np.ndarray:
    """Row median: removes thin near-vertical streaks, keeps horizontal edges."""
    return median_filter(degraded, MEDIAN_SHAPE)


def box_mean(image: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window around each pixel (integral image, reflect-padded)."""
    arr = np.asarray(image, dtype=np.float64)
    padded = _pad(arr, r + 1, r + 1)
    s = padded.cumsum(0).cumsum(1)
    k = 2 * r + 1
    h, w = arr.shape[:2]
    # window [i - r, i + r] in original coordinates = rows i+1 .. i+k in the padded array
    total = s[k : k + h, k : k + w] - s[:h, k : k + w] - s[k : k + h, :w] + s[:h, :w]
    return total / (k * k)


def guided_filter(
    guide: np.ndarray, src: np.ndarray, r: int = GUIDED_RADIUS, eps: float = GUIDED_EPS
) -> np.ndarray:
    """He et al.'s guided filter with a grey (per-channel) guide: ``q = mean(a) I + mean(b)``.

    ``guide`` and ``src`` have the same shape, (H, W) or (H, W, C) (channel c guides c);
    ``eps`` is on the [0, 1] intensity scale squared. O(1) per pixel in ``r``.
    """
    guide = np.asarray(guide, dtype=np.float64)
    src = np.asarray(src, dtype=np.float64)
    if guide.shape != src.shape:
        raise ValueError(f"guide {guide.shape} and source {src.shape} differ in shape")
    if r < 1 or eps <= 0:
        raise ValueError(f"need r >= 1 and eps > 0, got r={r}, eps={eps}")
    mean_i, mean_p = box_mean(guide, r), box_mean(src, r)
    var_i = box_mean(guide * guide, r) - mean_i**2
    cov_ip = box_mean(guide * src, r) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, r) * guide + box_mean(b, r)


def guided_derain(
    degraded: np.ndarray, r: int = GUIDED_RADIUS, eps: float = GUIDED_EPS
) -> np.ndarray:
    """Self-guided filtering: edge-preserving smoothing that flattens thin streaks."""
    arr = _check(degraded)
    return np.clip(guided_filter(arr, arr, r, eps), 0.0, 1.0).astype(np.float32)


# --- deblur ------------------------------------------------------------------------------


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (radius ceil(3 sigma)) of (H, W[, C]), reflect-padded."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    r = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    arr = np.asarray(image, dtype=np.float64)
    padded = _pad(arr, r, r)
    h, w = arr.shape[:2]
    rows = sum(t * padded[i : i + h] for i, t in enumerate(taps))
    return sum(t * rows[:, i : i + w] for i, t in enumerate(taps))


def unsharp_deblur(
    degraded: np.ndarray, sigma: float = UNSHARP_SIGMA, amount: float = UNSHARP_AMOUNT
) -> np.ndarray:
    """Unsharp masking: add back ``amount`` times the detail a Gaussian blur removes."""
    arr = _check(degraded).astype(np.float64)
    out = arr + amount * (arr - gaussian_blur(arr, sigma))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --- registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A named restorer; ``name`` is what reports print."""

    name: str
    restore: Restorer


def _by_name(*baselines: Baseline) -> dict[str, Baseline]:
    return {b.name: b for b in baselines}


#: The derain filters compared (see the module docstring); the first is the chosen one.
DERAIN_CANDIDATES: dict[str, Baseline] = _by_name(
    Baseline("median 1x7", median_derain),
    Baseline("median 3x7", lambda x: median_filter(x, (3, 7))),
    Baseline("median 5x5", lambda x: median_filter(x, (5, 5))),
    Baseline(f"guided r={GUIDED_RADIUS} eps={GUIDED_EPS:g}", guided_derain),
)

BASELINES: dict[str, Baseline] = {
    "denoise": Baseline(f"NLM h={NLM_H:g}", nlm_denoise),
    "derain": next(iter(DERAIN_CANDIDATES.values())),
    "deblur": Baseline(
        f"unsharp sigma={UNSHARP_SIGMA:g} amount={UNSHARP_AMOUNT:g}", unsharp_deblur
    ),
    "sr": Baseline("Lanczos x4", lambda lr: _lanczos_x4(lr)),
}


def _lanczos_x4(lr: np.ndarray) -> np.ndarray:
    from service.evaluation.upscale import lanczos_up

    return lanczos_up(lr, 4)


def baseline_for(task: str) -> Baseline:
    """The task's baseline; ValueError for an unknown task."""
    if task not in BASELINES:
        raise ValueError(f"no baseline for task {task!r}; expected one of {', '.join(BASELINES)}")
    return BASELINES[task]
