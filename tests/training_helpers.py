"""Shared helpers of the training tests (Diff-Mamba and VmambaIR): tiny data and the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.cli import train_cmd
from service.nn.vmambair import VmambaIRConfig
from service.training import RunOptions, Trainer

#: The smallest VmambaIR the trainer accepts, and the same network as `diffmamba train` flags.
TINY_VMAMBAIR = VmambaIRConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, d_state=4)
TINY_VMAMBAIR_ARGS = ["--model", "vmambair", "--dim", "8", "--blocks", "1,1,1,1",
                      "--refinement-blocks", "1", "--d-state", "4"]


def smooth_image(seed: int, size: int = 64) -> np.ndarray:
    """A photo-like (smooth, structured) uint8 RGB image, deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    channels = []
    for _ in range(3):
        fx, fy, phase = [*rng.uniform(0.05, 0.3, 2).tolist(), rng.uniform(0, 6.28)]
        channels.append(0.5 + 0.4 * np.sin(fx * xx + phase) * np.cos(fy * yy))
    return (np.stack(channels, -1) * 255).astype(np.uint8)


def make_pool(root: Path, size: int) -> Path:
    """A clean-image pool as `diffmamba data build` lays it out: three train, one val image."""
    for split, seeds in (("train", (0, 1, 2)), ("val", (3,))):
        (root / split).mkdir()
        for s in seeds:
            Image.fromarray(smooth_image(s, size)).save(root / split / f"img{s}.png")
    return root


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch and one numba thread: on a shared 2-core machine two spinning thread pools
    make these tiny steps 10-100x slower. Restored afterwards for the other test files."""
    import numba

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """`one_thread` for a whole test module: ``pytestmark = pytest.mark.usefixtures(...)``."""
    with one_thread():
        yield


def smooth_batch(seed: int, size: int, batch: int) -> torch.Tensor:
    """`smooth_image` as a (batch, 3, size, size) float tensor in [0, 1], one image repeated."""
    image = torch.from_numpy(smooth_image(seed, size)).permute(2, 0, 1)[None].float() / 255
    return image.repeat(batch, 1, 1, 1)


def fixed_batch_losses(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor],
                       iterations: int, lr: float) -> list[float]:
    """The loss per AdamW step of `model` fitted to whatever single batch `loss_of` scores."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    losses = []
    for _ in range(iterations):
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def assert_same_weights(expected: Trainer, actual: Trainer) -> None:
    """Live and EMA weights equal bit for bit (a resumed run against a straight one)."""
    for module_name in ("model", "ema"):
        mine = getattr(actual, module_name).state_dict()
        for name, value in getattr(expected, module_name).state_dict().items():
            assert torch.equal(value, mine[name]), f"{module_name}.{name}"


def run_options(workdir: Path, **changes: object) -> RunOptions:
    base: dict[str, object] = dict(workdir=workdir, save_every=1000, val_every=0, progress=False,
                                   handle_signals=False)
    base.update(changes)
    return RunOptions(**base)  # type: ignore[arg-type]


def train_cli(argv: list[str]) -> int:
    """`diffmamba train …` in-process; returns its exit status."""
    parser = argparse.ArgumentParser(prog="diffmamba")
    sub = parser.add_subparsers(dest="command", required=True)
    train_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.run(args))
