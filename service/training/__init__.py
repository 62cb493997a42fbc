"""Training Diff-Mamba as released: stage 1 (noise estimation), stage 2 (the sampler, end to end);
and VmambaIR (``arch="vmambair"``) in one stage of L1 regression.

Entry points: ``diffmamba train`` (``service.cli.train_cmd``), or in Python::

    cfg = TrainConfig(model=DiffMambaConfig(dim=16, num_blocks=(1, 1, 1, 1), d_state=8).to_dict(),
                      task="derain", clean="data/pool", max_iters=(2000, 200), lr=(3e-4, 1e-4))
    Trainer.create(cfg, RunOptions(workdir=Path("runs/derain"))).run()
    # later session: Trainer.resume(RunOptions(workdir=Path("runs/derain"))).run()
"""

from service.training.config import TrainConfig
from service.training.ema import ModelEMA
from service.training.export import export_from_workdir, export_weights
from service.training.losses import l1_loss, ms_ssim, ssim, stage2_loss
from service.training.metrics import psnr
from service.training.objectives import (
    antithetic_timesteps,
    single_pass_loss,
    stage1_loss,
    stage2_loss_fn,
)
from service.training.schedule import WarmupCosine, parse_piecewise, value_at
from service.training.trainer import RunOptions, StepRecord, Trainer

__all__ = [
    "ModelEMA",
    "RunOptions",
    "StepRecord",
    "TrainConfig",
    "Trainer",
    "WarmupCosine",
    "antithetic_timesteps",
    "export_from_workdir",
    "export_weights",
    "l1_loss",
    "ms_ssim",
    "parse_piecewise",
    "psnr",
    "single_pass_loss",
    "ssim",
    "stage1_loss",
    "stage2_loss",
    "stage2_loss_fn",
    "value_at",
]
