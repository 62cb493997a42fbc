"""Benchmarking restorers: paper-convention PSNR/SSIM, classical baselines, tables.

``diffmamba eval`` (``service.cli.eval_cmd``) is the command-line entry point; in Python::

    pairs = synthetic_pairs("denoise", seed=0, size=256)
    result = evaluate("denoise", ModelRestorer(load_checkpoint(path).model, steps=4), pairs)
    print(text_table(result))

Heavy or optional imports (OpenCV, scikit-image, the sampler) happen inside the functions
that need them.
"""

from service.evaluation.baselines import BASELINES, DERAIN_CANDIDATES, Baseline, baseline_for
from service.evaluation.metrics import MAX_PSNR, Metrics, compare, psnr, rgb_to_y, ssim, to_uint8
from service.evaluation.pairs import Pair, center_crop, folder_pairs, synthetic_pairs
from service.evaluation.report import markdown_table, text_table, write_json, write_markdown
from service.evaluation.runner import EvalResult, ImageResult, ModelRestorer, evaluate

__all__ = [
    "BASELINES",
    "DERAIN_CANDIDATES",
    "MAX_PSNR",
    "Baseline",
    "EvalResult",
    "ImageResult",
    "Metrics",
    "ModelRestorer",
    "Pair",
    "baseline_for",
    "center_crop",
    "compare",
    "evaluate",
    "folder_pairs",
    "markdown_table",
    "psnr",
    "rgb_to_y",
    "ssim",
    "synthetic_pairs",
    "text_table",
    "to_uint8",
    "write_json",
    "write_markdown",
]
