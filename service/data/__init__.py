"""Training data: synthetic degradations, the clean-image pool and torch datasets.

The service trains its own default checkpoints (no weights can be downloaded) from clean
photographs shipped in Debian wallpaper packages (``pool``), degraded synthetically per task
(``degrade``: rain streaks + haze, Gaussian/Poisson-Gaussian noise, camera-shake blur), served
to the trainer by ``datasets``. scikit-image's sample photos are the held-out evaluation set
(``evaluation``) and never enter the pool.

Typical flow::

    diffmamba data build --output data/pool          # offline, uses apt-get download
    ds = SyntheticPairDataset("data/pool/train", "derain", patch_size=64, length=100_000)
    val = fixed_validation_set("data/pool/val", "derain", patch_size=128, count=32)

The function ``degrade`` lives in ``service.data.degrade`` (``from service.data.degrade import
degrade``); it is not re-exported here so that ``service.data.degrade`` stays the module.
"""

from .datasets import (
    PairedFolderDataset,
    SyntheticPairDataset,
    fixed_validation_set,
    list_images,
    load_rgb,
)
from .degrade import DEGRADATIONS, EVAL_DEGRADATIONS, EVAL_SIGMA, TASKS
from .evaluation import EVALUATION_NAMES, evaluation_images
from .pool import ALLOW_LIST, DEFAULT_PACKAGES, PoolError, build_pool

__all__ = [
    "ALLOW_LIST",
    "DEFAULT_PACKAGES",
    "DEGRADATIONS",
    "EVALUATION_NAMES",
    "EVAL_DEGRADATIONS",
    "EVAL_SIGMA",
    "TASKS",
    "PairedFolderDataset",
    "PoolError",
    "SyntheticPairDataset",
    "build_pool",
    "evaluation_images",
    "fixed_validation_set",
    "list_images",
    "load_rgb",
]
