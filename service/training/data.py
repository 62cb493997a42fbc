"""Deterministic, resumable batches: every sample is named by a key (epoch, index, patch size).

Why keys: ``SyntheticPairDataset`` and ``PairedFolderDataset`` draw item ``i`` only from
``rng([seed, epoch, i])``, so a key fully determines a sample. The order in which keys are
visited is a per-epoch permutation from a seeded torch generator, and the position in that
stream is one integer. Saving (position) and the iteration is therefore enough to resume the
exact batches, with or without DataLoader workers, across patch-size changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from service.data import PairedFolderDataset, SyntheticPairDataset, fixed_validation_set
from service.data.sr_pairs import SRPairDataset
from service.training.config import TrainConfig
from service.training.schedule import Piecewise, value_at

if TYPE_CHECKING:
    from service.training.grid_validation import GridValidationSet

Key = tuple[int, int, int]  # (epoch, index, patch size)
Pair = tuple[torch.Tensor, torch.Tensor]


class KeyedDataset(Dataset):
    """Wraps a seeded dataset so that ``ds[(epoch, index, patch)]`` is a pure function."""

    def __init__(self, dataset: SyntheticPairDataset | PairedFolderDataset | SRPairDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key) -> Pair:  # type: ignore[override]
        epoch, index, patch = key
        self.dataset.set_epoch(epoch)
        self.dataset.set_patch_size(patch)
        return self.dataset[index]


def permutation(length: int, seed: int, epoch: int) -> list[int]:
    """The visiting order of one epoch (a seeded torch generator, independent of global RNG)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(length, generator=gen).tolist()


class KeyStream:
    """Batches of keys for iterations ``start, start+1, ...`` from stream position ``position``.

    Iteration ``i`` gets ``value_at(batches, i)`` samples of size ``value_at(patches, i)``; the
    stream walks epoch permutations back to back (a batch may span two epochs).
    """

    def __init__(self, length: int, seed: int, patches: Piecewise, batches: Piecewise,
                 start: int, position: int) -> None:
        self.length, self.seed = length, seed
        self.patches, self.batches = patches, batches
        self.start, self.position = start, position

    def __iter__(self) -> Iterator[list[Key]]:
        it, pos = self.start, self.position
        cache: dict[int, list[int]] = {}
        while True:
            size, patch = value_at(self.batches, it), value_at(self.patches, it)
            keys = []
            for p in range(pos, pos + size):
                epoch, offset = divmod(p, self.length)
                if epoch not in cache:
                    cache.clear()
                    cache[epoch] = permutation(self.length, self.seed, epoch)
                keys.append((epoch, cache[epoch][offset], patch))
            yield keys
            it, pos = it + 1, pos + size


class BatchSource:
    """``next()`` gives (degraded, clean) batches in [0, 1]; ``position`` is what to save."""

    def __init__(self, dataset: SyntheticPairDataset | PairedFolderDataset | SRPairDataset,
                 seed: int,
                 patches: Piecewise, batches: Piecewise, start: int = 0, position: int = 0,
                 workers: int = 0) -> None:
        self.position = position
        self.length = len(dataset)
        self._iteration = start
        self._batches = batches
        stream = KeyStream(len(dataset), seed, patches, batches, start, position)
        self._loader = iter(DataLoader(
            KeyedDataset(dataset), batch_sampler=stream, num_workers=workers,
            persistent_workers=False, prefetch_factor=2 if workers else None,
        ))

    @property
    def epoch(self) -> int:
        """The epoch the next sample comes from (informational: ``position`` determines it)."""
        return self.position // self.length

    def next(self) -> Pair:
        y, x0 = next(self._loader)
        self.position += value_at(self._batches, self._iteration)
        self._iteration += 1
        return y, x0


def _split_dirs(root: Path) -> tuple[Path, Path | None]:
    """A pool (root/train + root/val) or a plain folder of clean photos."""
    if (root / "train").is_dir():
        val = root / "val"
        return root / "train", val if val.is_dir() else None
    return root, None


def _scale(cfg: TrainConfig) -> int:
    from service.models.registry import ARCHITECTURES

    return ARCHITECTURES[cfg.arch].kind.scale


def train_dataset(cfg: TrainConfig,
                  stage: int) -> SyntheticPairDataset | PairedFolderDataset | SRPairDataset:
    """The stage's training set; stage 2 uses another seed so it sees other crops."""
    seed = cfg.seed + 7919 * (stage - 1)
    patch = cfg.patch_schedule[0][0]
    if _scale(cfg) > 1:  # LR/HR pairs: the input is 1/scale of the target
        assert cfg.clean is not None
        return SRPairDataset(_split_dirs(Path(cfg.clean))[0], patch, cfg.epoch_size, seed,
                             scale=_scale(cfg), augment=cfg.augment,
                             clean_share=cfg.clean_share, min_detail=cfg.min_detail)
    if cfg.pairs is not None:
        return PairedFolderDataset(cfg.pairs, patch, augment=cfg.augment, seed=seed,
                                   rotate=cfg.rotate)
    assert cfg.clean is not None and cfg.task is not None
    train_dir, _ = _split_dirs(Path(cfg.clean))
    return SyntheticPairDataset(train_dir, cfg.task, patch, cfg.epoch_size, seed,
                                augment=cfg.augment, clean_share=cfg.clean_share,
                                variant=cfg.degradation, min_detail=cfg.min_detail)


def grid_validation_data(cfg: TrainConfig) -> GridValidationSet | None:
    """The run's grid validation set (``grid_validation``; for super-resolution its two LR
    generators), None where it does not apply: a task without a grid, real pairs, no held-out
    photos or ``val_grid`` 0."""
    from service.models.registry import ARCHITECTURES
    from service.training.grid_validation import grid_validation_set, sr_validation_set

    if cfg.val_grid == 0 or cfg.clean is None or cfg.task is None:
        return None
    val_dir = Path(cfg.val_clean) if cfg.val_clean else _split_dirs(Path(cfg.clean))[1]
    if val_dir is None:
        return None
    kind = ARCHITECTURES[cfg.arch].kind
    if kind.scale > 1:
        return sr_validation_set(val_dir, cfg.val_grid, cfg.val_patch, cfg.val_seed,
                                 scale=kind.scale, multiple=kind.pad_multiple)
    return grid_validation_set(cfg.task, val_dir, cfg.val_grid, cfg.val_patch, cfg.val_seed,
                               multiple=kind.pad_multiple)


def validation_pairs(cfg: TrainConfig) -> list[Pair]:
    """The fixed held-out crops (empty when no held-out data is configured).

    Super-resolution runs have none: the trainer scores the input against the target, which
    differ in size there; ``diffmamba eval --task sr`` scores them instead.
    """
    if cfg.val_count == 0 or _scale(cfg) > 1:
        return []
    if cfg.pairs is not None:
        if cfg.val_pairs is None:
            return []
        ds = PairedFolderDataset(cfg.val_pairs, cfg.val_patch, augment=False, seed=cfg.val_seed)
        return [ds[i % len(ds)] for i in range(cfg.val_count)]
    assert cfg.clean is not None and cfg.task is not None
    val_dir = Path(cfg.val_clean) if cfg.val_clean else _split_dirs(Path(cfg.clean))[1]
    if val_dir is None:
        return []
    return fixed_validation_set(val_dir, cfg.task, cfg.val_patch, cfg.val_count, cfg.val_seed)
