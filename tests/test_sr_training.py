"""×4 SR training: Real-ESRGAN-style LR generation, LR/HR crop pairs, L1 through the trainer.

A tiny MambaRealSR11 (dim 8, blocks 1,1,1,1, one refinement block, d_state 4) on 16 px HR
patches of a few synthetic clean images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import make_pool, smooth_image, train_cli

from service.data.datasets import crop_detail
from service.data.degrade.second_order import bicubic_down, resize, second_order
from service.data.sr_pairs import SRPairDataset, scaled_crop
from service.models import load_checkpoint
from service.nn.vmambair_sr import MambaRealSR11Config, VmambaSR
from service.training import single_pass_loss

TINY = MambaRealSR11Config(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, d_state=4)
TINY_ARGS = ["--model", "vmambair-sr", "--dim", "8", "--blocks", "1,1,1,1",
             "--refinement-blocks", "1", "--d-state", "4"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pool(tmp_path_factory.mktemp("pool"), 48)


def _hr(seed: int, size: int = 32) -> np.ndarray:
    return smooth_image(seed, size).astype(np.float32) / 255


def test_second_order_is_seeded_quarter_size_and_not_bicubic() -> None:
    hr = _hr(1)
    a = second_order(hr, np.random.default_rng(5))
    b = second_order(hr, np.random.default_rng(5))
    c = second_order(hr, np.random.default_rng(6))
    assert a.shape == (8, 8, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    bicubic = bicubic_down(hr)
    assert bicubic.shape == (8, 8, 3)
    assert np.abs(a - bicubic).mean() > 1e-3  # blur, noise and JPEG moved it
    with pytest.raises(ValueError, match="divisible"):
        second_order(hr[:30], np.random.default_rng(0))


def test_pairs_are_lr_hr_crops_and_deterministic(pool: Path) -> None:
    ds = SRPairDataset(pool / "train", 16, 6, seed=3)
    lr, hr = ds[2]
    assert lr.shape == (3, 4, 4) and hr.shape == (3, 16, 16)
    again = SRPairDataset(pool / "train", 16, 6, seed=3)[2]
    assert torch.equal(lr, again[0]) and torch.equal(hr, again[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[2][1], hr)
    with pytest.raises(ValueError, match="multiple of 4"):
        ds.set_patch_size(18)


def test_scaled_crop_equals_resizing_the_whole_photo_then_cropping() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(40, 160, 2))
        photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = 4 * int(rng.integers(1, min(h, w) // 4 + 1))
        factor = rng.uniform(0.5, 1.0)
        sh, sw = max(p, round(h * factor)), max(p, round(w * factor))
        # corners and edges included: the filter is clamped there in both computations
        top = int(rng.choice([0, sh - p, int(rng.integers(0, sh - p + 1))]))
        left = int(rng.choice([0, sw - p, int(rng.integers(0, sw - p + 1))]))
        whole = resize(photo.astype(np.float32) / 255, sh, sw) if (sh, sw) != (h, w) \
            else photo.astype(np.float32) / 255
        got = scaled_crop(photo, (sh, sw), (top, left), p)
        assert got.shape == (p, p, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, whole[top : top + p, left : left + p], atol=1e-4)


def test_min_detail_redraws_flat_hr_crops(tmp_path: Path) -> None:
    img = np.full((64, 128, 3), 120, np.uint8)  # left half flat, right half noise
    img[:, 64:] = np.random.default_rng(0).integers(40, 200, (64, 64, 3), dtype=np.uint8)
    (tmp_path / "half").mkdir()
    Image.fromarray(img).save(tmp_path / "half" / "img.png")

    def flat(**kw: float) -> int:
        ds = SRPairDataset(tmp_path / "half", 16, 30, seed=4, augment=False, **kw)
        return sum(crop_detail(ds[i][1].permute(1, 2, 0).numpy()) < 0.02 for i in range(30))

    assert flat() >= 6
    assert flat(min_detail=0.02) <= 1
    with pytest.raises(ValueError, match="min_detail"):
        SRPairDataset(tmp_path / "half", 16, 4, min_detail=-0.1)


def _is_bicubic(lr: torch.Tensor, hr: torch.Tensor) -> bool:
    expected = bicubic_down(hr.permute(1, 2, 0).numpy())
    return bool(np.allclose(lr.permute(1, 2, 0).numpy(), expected, atol=1e-6))


def test_clean_share_gives_plain_bicubic_pairs(pool: Path) -> None:
    """Clean pairs are the bicubic LR of their HR crop; without a share none is, and the
    default stream is unchanged by the option's existence."""
    mostly = SRPairDataset(pool / "train", 16, 12, seed=1, clean_share=0.9)
    never = SRPairDataset(pool / "train", 16, 12, seed=1)
    clean = sum(_is_bicubic(*mostly[i]) for i in range(12))
    assert clean >= 8
    assert not any(_is_bicubic(*never[i]) for i in range(12))
    assert torch.equal(never[3][0], SRPairDataset(pool / "train", 16, 12, seed=1,
                                                  clean_share=0.0)[3][0])
    with pytest.raises(ValueError, match="clean_share"):
        SRPairDataset(pool / "train", 16, 12, clean_share=1.0)


def test_a_few_iterations_lower_the_l1_loss() -> None:
    torch.manual_seed(0)
    model = VmambaSR(TINY)
    hr = torch.stack([torch.from_numpy(_hr(s, 16)).permute(2, 0, 1) for s in (1, 2)])
    lr = torch.stack([torch.from_numpy(second_order(h.permute(1, 2, 0).numpy(),
                                                    np.random.default_rng(i))).permute(2, 0, 1)
                      for i, h in enumerate(hr)])
    assert lr.shape == (2, 3, 4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    losses = []
    for _ in range(15):
        loss = single_pass_loss(model, lr, hr)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_cli_trains_and_exports_a_servable_sr_model(pool: Path, tmp_path: Path) -> None:
    work, output = tmp_path / "run", tmp_path / "models" / "sr.safetensors"
    code = train_cli(["train", "--workdir", str(work), "--clean", str(pool), *TINY_ARGS,
                      "--max-iters", "3", "--batch-schedule", "2", "--patch-schedule", "16",
                      "--log-every", "1", "--no-progress", "--threads", "1",
                      "--output", str(output)])
    assert code == 0
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) == 3 and all(np.isfinite(losses))
    loaded = load_checkpoint(output)
    assert (loaded.arch, loaded.kind, loaded.kind.scale) == ("mambarealsr11", "super_resolution", 4)
    assert loaded.config == TINY


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "derain"], "does not fit"),
        (["--stage", "both"], "one stage"),
    ],
)
def test_cli_refuses_what_sr_cannot_train(pool: Path, tmp_path: Path, argv: list[str],
                                          message: str, capsys: pytest.CaptureFixture) -> None:
    code = train_cli(["train", "--workdir", str(tmp_path / "w"), "--clean", str(pool),
                      *TINY_ARGS, *argv])
    assert code == 2 and message in capsys.readouterr().err
