"""The two-stage training loop: resumable, time-limited, logged, validated.

Why it is built around one saved state: training runs in sessions of a few hours, so a run is a
sequence of (resume -> iterate -> save) that must equal one uninterrupted run. Every source of
change (weights, EMA, AdamW moments, LR position, RNGs, data position) is saved together and
restored before the next iteration; validation draws from its own fixed seed and never touches
the training RNGs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.diffusion import initial_noise, restore
from service.engines.mixers import keep_mixers_fp32
from service.engines.precision import autocast
from service.models import load_checkpoint
from service.models.registry import ARCHITECTURES
from service.training.config import TrainConfig
from service.training.data import (
    BatchSource,
    grid_validation_data,
    train_dataset,
    validation_pairs,
)
from service.training.ema import ModelEMA, warmup_decay
from service.training.export import export_weights, stage_metadata
from service.training.grid_validation import (
    GridScore,
    GridValidationSet,
    best_improved,
    describe,
    score_grid,
)
from service.training.metrics import psnr
from service.training.objectives import single_pass_loss, stage1_loss, stage2_loss_fn
from service.training.schedule import WarmupCosine, value_at
from service.training.state import capture_rng, load_state, restore_rng, save_state, state_path

LOG = logging.getLogger("service.training")
LOG_NAME = "log.jsonl"
BEST_NAME = "best.safetensors"
VALIDATED_DIR = "validated"  # with RunOptions.keep_validated: one file per validation
"""The best-scoring weights on the grid validation (``grid_validation``), with its .pth."""
ALWAYS_CHANGEABLE = ("stage", "max_iters", "val_count", "val_patch", "val_seed", "val_grid")
"""Fields a resume may always change: going on to stage 2, extending a run, validation."""
PER_STAGE_FIELDS = ("lr", "min_lr", "warmup")
NEVER_CHANGEABLE = ("model", "arch")


@dataclass
class RunOptions:
    """Per-session knobs: they change how a session runs, never the numbers it computes."""

    workdir: Path
    save_every: int = 500
    val_every: int = 1000
    val_batch: int = 4
    log_every: int = 10
    time_limit_s: float | None = None
    session_iters: int | None = None  # stop (saved) after this many iterations
    workers: int = 0
    progress: bool = True
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    # bf16: convolutions and matmuls under autocast, the scan mixers and the loss in fp32. It
    # changes rounding, not the plan, so a run may switch between sessions.
    precision: str = "fp32"
    output: Path | None = None
    handle_signals: bool = True
    # Also write the EMA weights of every validation to VALIDATED_DIR: the kept best is chosen
    # on pool photos, and a run's trade-offs (say, clean photos against heavy degradations)
    # can then be judged on the test grid for every validated step, not just the best one.
    keep_validated: bool = False


@dataclass(frozen=True)
class StepRecord:
    stage: int
    step: int  # 1-based: iterations done in the stage after this one
    loss: float
    lr: float


class StopTraining(Exception):
    """Raised inside the loop to leave it after saving (time limit or signal)."""


def merge_resume_config(
    stored: TrainConfig, given: dict[str, Any], started: set[int] | None = None,
    in_progress: bool = True,
) -> TrainConfig:
    """The stored plan with the changes a resume may make without breaking continuity.

    ``started``: stages that have run iterations; ``in_progress``: one of them is unfinished.
    Per-stage values (lr, min lr, warmup) may change for stages not started yet; every other
    field (data, schedules, optimizer settings) only between stages; the model never. Values
    given equal to the stored ones are always accepted, so the first command line can simply be
    repeated with ``--resume``.
    """
    started = {1, 2} if started is None else started
    changes: dict[str, Any] = {}
    conflicts = []
    for name, value in given.items():
        if value is None:
            continue
        old = getattr(stored, name)
        if _normal(value) == _normal(old) or name in ALWAYS_CHANGEABLE:
            changes[name] = value
        elif name in PER_STAGE_FIELDS:
            locked = [s for s in (1, 2) if s in started and value[s - 1] != old[s - 1]]
            if locked:
                conflicts.append(f"{name} of stage {locked[0]}, which has started (stored "
                                 f"{old[locked[0] - 1]!r}, given {value[locked[0] - 1]!r})")
            else:
                changes[name] = value
        elif name in NEVER_CHANGEABLE or in_progress:
            conflicts.append(f"{name} (stored {_normal(old)!r}, given {_normal(value)!r})")
        else:
            changes[name] = value
    if conflicts:
        raise ValueError("cannot change on --resume: " + "; ".join(conflicts)
                         + ". Start a new workdir to change them.")
    return dataclasses.replace(stored, **changes) if changes else stored


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


class Trainer:
    """Build with ``Trainer.create`` (new workdir) or ``Trainer.resume``; then ``run()``."""

    def __init__(self, cfg: TrainConfig, opts: RunOptions, model: nn.Module) -> None:
        self.cfg, self.opts = cfg, opts
        self.image_loss = cfg.build_loss()
        self.device = opts.device
        self.model = model.to(self.device).train()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.ema = ModelEMA(self.model, cfg.ema_decay)
        if opts.precision != "fp32":
            # After the EMA copy: the wrapped forwards must stay on the trained model alone.
            keep_mixers_fp32(self.model)
        self.stage = cfg.stages[0]
        self.step = 0
        self.done: list[int] = []
        self.elapsed = 0.0
        self.noise = torch.Generator()
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_schedule: WarmupCosine | None = None
        self.data: BatchSource | None = None
        self.position = 0
        self.history: list[StepRecord] = []
        self.last_val: dict[str, float] = {}
        self._val_set: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._grid_set: GridValidationSet | None = None
        self._grid_built = False
        self.best: dict[str, Any] = {}  # score, stage, step, set of the kept best weights
        self.last_grid: GridScore | None = None
        self._stop: str | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, cfg: TrainConfig, opts: RunOptions) -> Trainer:
        """A fresh run. Stage 2 first needs weights: ``cfg.init`` (a stage-1 checkpoint). With
        ``cfg.init`` stage 1 starts from those weights instead of a random init: fine-tuning the
        authors' checkpoint on one's own data, or one task's noise estimator for another task,
        converges far sooner than training from scratch."""
        _seed_everything(cfg.seed)
        if cfg.stages[0] == 2 and cfg.init is None:
            raise ValueError("stage 2 needs stage-1 weights: pass --init CHECKPOINT, or "
                             "--resume a workdir where stage 1 ran")
        if cfg.init is not None:
            model, model_cfg = _load_init(cfg.init, cfg.init_weights, cfg.arch)
            cfg = dataclasses.replace(cfg, model=model_cfg.to_dict())
        else:
            model = build_model(cfg.arch, cfg.model)
        trainer = cls(cfg, opts, model)
        trainer._enter_stage(cfg.stages[0], from_previous=False)
        trainer._log({"event": "start", "config": cfg.to_dict()})
        if cfg.init is not None and opts.val_every:
            # The starting weights are the first candidate: a run that only makes them worse
            # on the grid keeps them as its best.
            trainer._validate_and_report(None)
        return trainer

    @classmethod
    def resume(cls, opts: RunOptions, given: dict[str, Any] | None = None) -> Trainer:
        """Continue from ``opts.workdir/state.pt`` exactly where it stopped."""
        state = load_state(state_path(opts.workdir))
        done, stage, step = {int(s) for s in state["done"]}, int(state["stage"]), int(state["step"])
        started = done | ({stage} if step > 0 else set())
        cfg = merge_resume_config(TrainConfig.from_dict(state["config"]), given or {}, started,
                                  in_progress=step > 0 and stage not in done)
        model = build_model(cfg.arch, state["model_config"])
        model.load_state_dict(state["model"], strict=True)
        trainer = cls(cfg, opts, model)
        trainer.ema.load_state_dict(state["ema"])
        trainer.done = [int(s) for s in state["done"]]
        trainer.elapsed = float(state["elapsed"])
        trainer.stage, trainer.step = int(state["stage"]), int(state["step"])
        trainer.last_val = dict(state.get("val", {}))
        trainer.best = dict(state.get("best", {}))
        if trainer.best and trainer.best.get("set") != trainer._validation_signature():
            # Scores on another validation set do not compare: the next validation starts over.
            trainer._log({"event": "best_reset", "was": trainer.best})
            trainer.best = {}
        if trainer.stage in trainer.done:
            trainer.position = 0  # nothing left of that stage to continue
        else:
            trainer._setup_stage(trainer.stage, trainer.step, int(state["data"]["position"]))
            assert trainer.optimizer is not None
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.noise.set_state(state["noise_rng"])
        restore_rng(state["rng"])
        trainer._log({"event": "resume", "stage": trainer.stage, "step": trainer.step})
        return trainer

    def _setup_stage(self, stage: int, step: int, position: int) -> None:
        """Optimizer, LR schedule and data stream of ``stage`` at iteration ``step``."""
        cfg, i = self.cfg, self.cfg.for_stage(stage)
        self.stage, self.step, self.position = stage, step, position
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr[i], betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.lr_schedule = WarmupCosine(cfg.lr[i], cfg.min_lr[i], cfg.max_iters[i], cfg.warmup[i])
        self.data = BatchSource(
            train_dataset(cfg, stage), cfg.seed + 7919 * (stage - 1), cfg.patch_schedule,
            cfg.batch_schedule, start=step, position=position, workers=self.opts.workers,
        )

    def _enter_stage(self, stage: int, from_previous: bool) -> None:
        """Start ``stage`` at iteration 0; stage 2 after stage 1 starts from its EMA weights."""
        if stage == 2 and from_previous and self.cfg.init_weights == "ema":
            self.model.load_state_dict(self.ema.state_dict())
        self.ema.copy_from(self.model)
        self._setup_stage(stage, 0, 0)
        self.noise.manual_seed(self.cfg.seed * 1_000_003 + 100 + stage)
        self._log({"event": "stage_start", "stage": stage})

    # ----------------------------------------------------------------- the loop
    def run(self) -> str:
        """Train every planned stage. Returns 'done', 'time_limit', 'session_iters' or the name
        of the signal that stopped it (the state is saved in every case)."""
        self._session_start = time.monotonic()
        self._iter_estimate = 0.0
        self._session_done = 0
        with self._signals():
            for stage in self.cfg.stages:
                if stage in self.done:
                    continue
                if self.stage != stage or self.stage in self.done:
                    self._enter_stage(stage, from_previous=True)
                try:
                    self._run_stage()
                except StopTraining as stop:
                    self.save()
                    self._log({"event": "stop", "reason": str(stop), "stage": self.stage,
                               "step": self.step})
                    return str(stop)
                self._finish_stage()
        return "done"

    def _run_stage(self) -> None:
        i = self.cfg.for_stage(self.stage)
        total = self.cfg.max_iters[i]
        bar = _progress(total, self.step, f"stage {self.stage}", self.opts.progress)
        window: list[float] = []
        window_time = 0.0
        try:
            while self.step < total:
                self._check_stop()
                start = time.monotonic()
                record = self.train_step()
                took = time.monotonic() - start
                self._session_done += 1
                self.elapsed += took
                window.append(record.loss)
                window_time += took
                bar.update(1)
                bar.set_postfix(loss=f"{record.loss:.4f}", lr=f"{record.lr:.2e}", refresh=False)
                if self.step % self.opts.log_every == 0 or self.step == total:
                    self._log_train(record, window, window_time)
                    window, window_time = [], 0.0
                if self.opts.val_every and self.step % self.opts.val_every == 0 \
                        and self.step < total:
                    self._validate_and_report(bar)
                if self.opts.save_every and self.step % self.opts.save_every == 0:
                    self.save()
                self._iter_estimate = max(took, 0.9 * self._iter_estimate + 0.1 * took)
        finally:
            bar.close()

    def train_step(self) -> StepRecord:
        """One optimizer step of the current stage."""
        assert self.optimizer is not None and self.lr_schedule is not None and self.data
        lr = self.lr_schedule.apply(self.optimizer, self.step)
        degraded, clean = self.data.next()
        degraded, clean = degraded.to(self.device), clean.to(self.device)
        self.model.train()
        with autocast(self.opts.precision, self.device):
            if self.cfg.single_pass:
                loss = single_pass_loss(self.model, degraded, clean, self.image_loss)
            elif self.stage == 1:
                loss = stage1_loss(self.model, degraded, clean, self.noise)
            else:
                loss = stage2_loss_fn(self.model, degraded, clean, self.noise, self.cfg.steps,
                                      self.image_loss)
        loss = loss.float()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"stage {self.stage} iteration {self.step + 1}: loss is {value}; the last saved "
                "state is intact (try a lower --lr or --grad-clip)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model, warmup_decay(self.cfg.ema_decay, self.cfg.ema_warmup,
                                                 self.step))
        self.step += 1
        self.position = self.data.position
        record = StepRecord(self.stage, self.step, value, lr)
        self.history.append(record)
        return record

    def _finish_stage(self) -> None:
        metrics = self.validate()
        self._keep_validated(metrics)
        self.done.append(self.stage)
        paths = self.export(self.opts.workdir / f"stage{self.stage}.safetensors")
        final = self.stage == self.cfg.stages[-1]
        if final and self.opts.output is not None:
            paths = self.export(self.opts.output)
        self.save()
        self._log({"event": "stage_done", "stage": self.stage, "step": self.step,
                   "export": [str(p) for p in paths], **metrics})
        LOG.info("stage %d done after %d iterations: %s", self.stage, self.step, paths[0])

    def _check_stop(self) -> None:
        if self._stop is not None:
            raise StopTraining(self._stop)
        if self.opts.session_iters is not None and self._session_done >= self.opts.session_iters:
            raise StopTraining("session_iters")
        limit = self.opts.time_limit_s
        if limit is not None and time.monotonic() - self._session_start + self._iter_estimate \
                >= limit:
            raise StopTraining("time_limit")

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: finish the iteration, save, return. A second SIGINT interrupts."""
        if not self.opts.handle_signals or threading.current_thread() is not \
                threading.main_thread():
            yield
            return
        names = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

        def handler(signum: int, frame: Any) -> None:
            if self._stop is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop = names.get(signal.Signals(signum), "signal")

        previous = {s: signal.signal(s, handler) for s in names}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ----------------------------------------------------------------- validation
    def validate(self) -> dict[str, float]:
        """Mean PSNR of the EMA weights with the full S-step sampler from a fixed x_T (one pass,
        clamped, for single-pass models) on the held-out crops, and the grid validation's
        score (``grid_validation``) where the run has one."""
        start = time.monotonic()
        result: dict[str, float] = {}
        if self._val_set is None:
            pairs = validation_pairs(self.cfg)
            if pairs:
                degraded = torch.stack([p[0] for p in pairs])
                clean = torch.stack([p[1] for p in pairs])
                x_T = initial_noise(tuple(clean.shape), seed=self.cfg.val_seed)
                self._val_set = (degraded, clean, x_T)
        if self._val_set is not None:
            degraded, clean, x_T = self._val_set
            batch = max(1, self.opts.val_batch)
            outs = [self._restore_batch(degraded[s:s + batch], x_T[s:s + batch])
                    for s in range(0, len(clean), batch)]
            result["val_psnr"] = float(psnr(torch.cat(outs), clean).mean())
            result["val_input_psnr"] = float(psnr(degraded, clean).mean())
        grid = self._grid_validation()
        if grid is not None:
            result.update(grid.summary())
            self.last_grid = grid
        if result:
            result["val_seconds"] = time.monotonic() - start
        self.last_val = result
        return result

    def _restore_batch(self, degraded: torch.Tensor,
                       x_T: torch.Tensor | None = None) -> torch.Tensor:
        """The EMA weights' restoration of one validation batch, on the CPU, in [0, 1]."""
        net = self.ema.module.eval()
        x = degraded.to(self.device)
        with torch.no_grad():
            if self.cfg.single_pass:
                out = net(x).clamp(0, 1)
            else:
                if x_T is None:
                    x_T = initial_noise(tuple(x.shape), seed=self.cfg.val_seed)
                out = restore(net, x, steps=self.cfg.steps, x_T=x_T.to(self.device))
        return out.cpu()

    def _grid_validation(self) -> GridScore | None:
        if not self._grid_built:
            self._grid_set = grid_validation_data(self.cfg)
            self._grid_built = True
        if self._grid_set is None:
            return None
        return score_grid(self._grid_set, self._restore_batch, max(1, self.opts.val_batch))

    def _validation_signature(self) -> str:
        """What the grid validation set is built from; best scores compare only within one."""
        c = self.cfg
        return f"{c.val_clean or c.clean}|{c.val_grid}|{c.val_patch}|{c.val_seed}"

    def _keep_validated(self, metrics: dict[str, float]) -> None:
        """The best weights so far and, with ``keep_validated``, these ones whatever they score."""
        if metrics and self.opts.keep_validated:
            score = metrics.get("grid_score")
            self.export(self.validated_path(),
                        {} if score is None else {"grid_score": f"{score:.4f}"}, pth=False)
        self._keep_best(metrics)

    def _keep_best(self, metrics: dict[str, float]) -> None:
        """Export the EMA weights to BEST_NAME when the grid score beats the kept one."""
        score = metrics.get("grid_score")
        if score is None or not best_improved(self.best.get("score"), score):
            return
        self.best = {"score": score, "stage": self.stage, "step": self.step,
                     "set": self._validation_signature()}
        self.export(self.opts.workdir / BEST_NAME, {"grid_score": f"{score:.4f}"})
        self._log({"event": "best", **self.best})

    def _validate_and_report(self, bar: Any) -> None:
        """Validate, log, keep the best weights; ``bar`` (tqdm or None) prints the line."""
        metrics = self.validate()
        if not metrics:
            return
        entry: dict[str, Any] = {"stage": self.stage, "step": self.step, **metrics}
        parts = []
        if "val_psnr" in metrics:
            parts.append(f"val PSNR {metrics['val_psnr']:.2f} dB (input "
                         f"{metrics['val_input_psnr']:.2f} dB)")
        if "grid_score" in metrics and self.last_grid is not None:
            entry["grid_cells"] = self.last_grid.per_cell()
            parts.append(describe(self.last_grid))
        self._log(entry)
        line = f"stage {self.stage} step {self.step}: " + "; ".join(parts)
        if bar is not None:
            bar.write(line)
        else:
            LOG.info(line)
        self._keep_validated(metrics)

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model_config": model_config(self.cfg.arch, self.cfg.model).to_dict(),
            "stage": self.stage,
            "step": self.step,
            "done": list(self.done),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scheduler": self.lr_schedule.state_dict() if self.lr_schedule else {},
            "noise_rng": self.noise.get_state(),
            "rng": capture_rng(),
            "data": {"position": self.position,
                     "epoch": self.data.epoch if self.data is not None else 0},
            "elapsed": self.elapsed,
            "val": dict(self.last_val),
            "best": dict(self.best),
        }

    def save(self) -> Path:
        path = state_path(self.opts.workdir)
        save_state(path, self.state_dict())
        return path

    def export(self, output: Path, extra: dict[str, str] | None = None,
               pth: bool = True) -> tuple[Path, ...]:
        return export_weights(
            output, self.model.state_dict(), self.ema.state_dict(),
            model_config(self.cfg.arch, self.cfg.model).to_dict(),
            {**stage_metadata(self.cfg.to_dict(), self.stage, self.step), **(extra or {})},
            arch=self.cfg.arch, pth=pth,
        )

    def validated_path(self) -> Path:
        return self.opts.workdir / VALIDATED_DIR / f"stage{self.stage}-step{self.step:06d}" \
            ".safetensors"

    def _log_train(self, record: StepRecord, window: list[float], seconds: float) -> None:
        assert self.data is not None
        self._log({
            "stage": record.stage, "step": record.step, "loss": sum(window) / len(window),
            "loss_last": record.loss, "lr": record.lr,
            "it_s": len(window) / seconds if seconds > 0 else None,
            "patch": value_at(self.cfg.patch_schedule, record.step - 1),
            "batch": value_at(self.cfg.batch_schedule, record.step - 1),
        })

    def _log(self, entry: dict[str, Any]) -> None:
        self.opts.workdir.mkdir(parents=True, exist_ok=True)
        line = {"time": time.time(), "elapsed": round(self.elapsed, 3), **entry}
        with open(self.opts.workdir / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_config(arch: str, model: dict[str, Any]) -> Any:
    """The architecture's config object (DiffMambaConfig, VmambaIRConfig) from its dict."""
    return ARCHITECTURES[arch].config_from_dict(model)


def build_model(arch: str, model: dict[str, Any]) -> nn.Module:
    """A fresh network of the registered architecture ``arch`` (initialised by its own rules)."""
    return ARCHITECTURES[arch].build(model_config(arch, model))


def _load_init(path: str, which: str, arch: str = "diffmamba") -> tuple[nn.Module, Any]:
    """A stage-1 checkpoint (ours or the release's): EMA weights unless ``which='params'``."""
    loaded = load_checkpoint(path, channels_last=False)
    if loaded.arch != arch:
        raise ValueError(f"{path}: a {loaded.arch} checkpoint, not {arch}")
    model = loaded.model
    if which == "params":
        if Path(path).suffix == ".safetensors":
            raise ValueError(f"{path}: a .safetensors export holds EMA weights only; "
                             "use the .pth for --init-weights params")
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or "params" not in raw:
            raise ValueError(f"{path} has no 'params' entry")
        model.load_state_dict({k.removeprefix("module."): v for k, v in raw["params"].items()})
    return model, loaded.config


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)
