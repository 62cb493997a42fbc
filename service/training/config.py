"""Everything that determines a training run's numbers, stored in the workdir's state.

Why a frozen dataclass kept apart from the CLI: a resumed run must reuse exactly these values
(the loss curve must continue bit-for-bit), so they are saved with the state and read back from
it, while run-time knobs (threads, time limit, save/validation cadence) may change per session.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from service.data.degrade import check_variant
from service.diffusion import MAX_STEPS
from service.training.losses import (
    DEFAULT_LOSS,
    RESTORATION_LOSSES,
    ImageLoss,
    restoration_loss,
)
from service.training.schedule import Piecewise, validate_piecewise

if TYPE_CHECKING:
    from service.models.kinds import ModelKind

STAGES = (1, 2)
STAGE_CHOICES = ("1", "2", "both")


def architecture_kind(arch: str) -> ModelKind | None:
    """The kind of a registered architecture, None for an unknown one."""
    from service.models.registry import ARCHITECTURES

    found = ARCHITECTURES.get(arch)
    return found.kind if found is not None else None


def _pair(value: Any, cast: type) -> tuple[Any, Any]:
    a, b = value
    return cast(a), cast(b)


@dataclass(frozen=True)
class TrainConfig:
    """One training plan. Per-stage values are (stage 1, stage 2) pairs.

    ``arch`` names the network (service.models.registry). Single-pass models (VmambaIR) have
    one objective, regression of the clean image (``loss_name``), run as stage 1; stage 2 (the
    sampler) and the sampler options do not apply to them.
    """

    model: dict[str, Any]
    arch: str = "diffmamba"
    task: str | None = None
    clean: str | None = None  # synthetic degradations of these clean photos
    val_clean: str | None = None
    pairs: str | None = None  # or real pairs: DIR/input + DIR/target
    val_pairs: str | None = None
    stage: str = "both"
    max_iters: tuple[int, int] = (300_000, 20_000)
    lr: tuple[float, float] = (3e-4, 1e-5)
    min_lr: tuple[float, float] = (1e-6, 1e-7)
    warmup: tuple[int, int] = (0, 0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    # EMA decay ramp (service.training.ema.warmup_decay); 0 = constant decay, as in states
    # saved before the ramp existed.
    ema_warmup: int = 10
    grad_clip: float = 0.0
    # restoration vs clean image (service.training.losses.RESTORATION_LOSSES): a single-pass
    # network's regression, Diff-Mamba's stage 2; None = the release's (DEFAULT_LOSS)
    image_loss: str | None = None
    psnr_ceiling: float | None = None  # dB: the PSNR loss ignores images restored above it
    patch_schedule: Piecewise = ((64, 0),)
    batch_schedule: Piecewise = ((8, 0),)
    steps: int = 4
    alpha: float = 0.84
    seed: int = 0
    epoch_size: int = 10_000
    clean_share: float = 0.1  # identity pairs among the synthetic ones (see SyntheticPairDataset)
    # crops flatter than this are redrawn (service.data.datasets.detailed_crop); 0 = off
    min_detail: float = 0.0
    degradation: str | None = None  # a named variant of the task's generator (degrade.VARIANTS)
    augment: bool = True
    rotate: bool = True
    val_count: int = 4
    val_patch: int = 128
    val_seed: int = 0
    # held-out photos scored on the robustness grid's cells at each validation (0 = off);
    # the best-scoring weights are kept (service.training.grid_validation)
    val_grid: int = 4
    init: str | None = None  # start weights (stage 1 fine-tuning, or stage 2 without stage 1)
    init_weights: str = "ema"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name, cast in (("max_iters", int), ("lr", float), ("min_lr", float),
                           ("warmup", int), ("betas", float)):
            set_(self, name, _pair(getattr(self, name), cast))
        set_(self, "patch_schedule", validate_piecewise(self.patch_schedule, "patch schedule"))
        set_(self, "batch_schedule", validate_piecewise(self.batch_schedule, "batch schedule"))
        problems = []
        if self.stage not in STAGE_CHOICES:
            problems.append(f"stage must be one of {STAGE_CHOICES}, got {self.stage!r}")
        if (self.clean is None) == (self.pairs is None):
            problems.append("give exactly one data source: clean photos or pairs")
        if self.clean is not None and self.task is None:
            problems.append("synthetic data (clean photos) needs a task")
        if min(self.max_iters) < 1:
            problems.append(f"max_iters must be positive, got {self.max_iters}")
        for s in (0, 1):
            if not self.lr[s] > 0 or not 0 <= self.min_lr[s] <= self.lr[s]:
                problems.append(f"stage {s + 1}: need lr > 0 and 0 <= min lr <= lr")
            if not 0 <= self.warmup[s] < self.max_iters[s]:
                problems.append(f"stage {s + 1}: warmup must be in [0, max iterations)")
        if not 1 <= self.steps <= MAX_STEPS:
            problems.append(f"sampler steps must be in 1..{MAX_STEPS}, got {self.steps}")
        if not 0 <= self.alpha <= 1 or not 0 <= self.ema_decay <= 1:
            problems.append("alpha and EMA decay must be in [0, 1]")
        if self.ema_warmup < 0:
            problems.append(f"EMA warm-up must be >= 0, got {self.ema_warmup}")
        if not 0 <= self.clean_share < 1:
            problems.append(f"clean share must be in [0, 1), got {self.clean_share}")
        if not 0 <= self.min_detail < 1:
            problems.append(f"min detail must be in [0, 1), got {self.min_detail}")
        if self.min_detail and self.pairs is not None:
            problems.append("min detail applies to crops of clean photos, not to real pairs")
        if self.epoch_size < 1 or self.val_count < 0 or self.val_patch < 1 or self.val_grid < 0:
            problems.append("epoch size and validation patch must be positive, validation counts"
                            " at least 0")
        kind = architecture_kind(self.arch)
        if kind is None:
            problems.append(f"unknown model {self.arch!r}")
        elif not kind.takes_timestep and self.stage != "1":
            problems.append(f"{self.arch} trains in one stage (L1 regression): stage must be"
                            f" '1', got {self.stage!r}")
        if self.image_loss is not None and self.image_loss not in RESTORATION_LOSSES:
            problems.append(f"loss must be one of {', '.join(RESTORATION_LOSSES)}, got "
                            f"{self.image_loss!r}")
        elif kind is not None and self.psnr_ceiling is not None and (
                self.loss_name != "psnr" or not 0 < self.psnr_ceiling <= 100):
            problems.append("a PSNR ceiling applies to --loss psnr and must be in (0, 100] dB, "
                            f"got {self.psnr_ceiling!r} with loss {self.loss_name!r}")
        if self.degradation is not None:
            try:
                if self.clean is None or self.task is None:
                    raise ValueError("a degradation variant needs synthetic data (clean photos)")
                check_variant(self.task, self.degradation)
            except ValueError as exc:
                problems.append(str(exc))
        if self.init_weights not in ("ema", "params"):
            problems.append("init weights must be 'ema' or 'params'")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def single_pass(self) -> bool:
        """True for networks trained by direct regression (no noise, no sampler)."""
        kind = architecture_kind(self.arch)
        return kind is not None and not kind.takes_timestep

    @property
    def loss_name(self) -> str:
        """The image loss in use: the chosen one, or the release's for this network."""
        if self.image_loss is not None:
            return self.image_loss
        kind = architecture_kind(self.arch)
        return DEFAULT_LOSS[kind is not None and kind.takes_timestep]

    def build_loss(self) -> ImageLoss:
        """The configured image loss (MS-SSIM weight ``alpha``, PSNR ``psnr_ceiling``)."""
        return restoration_loss(self.loss_name, self.alpha, self.psnr_ceiling)

    @property
    def stages(self) -> tuple[int, ...]:
        return STAGES if self.stage == "both" else (int(self.stage),)

    def for_stage(self, stage: int) -> int:
        """Index into the per-stage pairs."""
        if stage not in STAGES:
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        return stage - 1

    def to_dict(self) -> dict[str, Any]:
        """Plain lists/dicts/scalars only, so the state file loads with weights_only=True."""
        out = asdict(self)
        for name in ("max_iters", "lr", "min_lr", "warmup", "betas"):
            out[name] = list(out[name])
        for name in ("patch_schedule", "batch_schedule"):
            out[name] = [list(e) for e in out[name]]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        data = dict(data)
        if "loss" in data:
            # Saved before the loss applied to Diff-Mamba's stage 2: "loss" was the single-pass
            # regression's, and Diff-Mamba always used the release's stage-2 loss.
            old = data.pop("loss")
            kind = architecture_kind(data.get("arch", "diffmamba"))
            data.setdefault("image_loss",
                            None if kind is not None and kind.takes_timestep else old)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options in state: {unknown}")
        # A state saved before the EMA ramp existed resumes with the constant decay it used.
        return cls(**{"ema_warmup": 0, **data})
