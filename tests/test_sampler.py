from __future__ import annotations

import pytest
import torch

from service.diffusion import DDIMSchedule, initial_noise, restore
from service.nn import DiffMamba, DiffMambaConfig


@pytest.fixture(scope="module")
def tiny_model() -> DiffMamba:
    torch.manual_seed(0)
    return DiffMamba(DiffMambaConfig(dim=8, num_blocks=(1, 1, 1, 1), d_state=4)).eval()


def test_four_step_pairs_are_the_releases() -> None:
    assert DDIMSchedule().timestep_pairs(4) == [(750, 500), (500, 250), (250, 0), (0, -1)]


def test_three_steps_follow_range_semantics() -> None:
    # range(0, 1000, 333) has four entries: the release runs four passes for S = 3.
    assert DDIMSchedule().timestep_pairs(3) == [(999, 666), (666, 333), (333, 0), (0, -1)]


def test_alpha_bar_endpoints() -> None:
    s = DDIMSchedule()
    assert s.alpha_bar(-1).item() == 1.0
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64).float()
    assert torch.isclose(s.alpha_bar(0), 1 - betas[0])
    assert torch.isclose(s.alpha_bar(999), torch.cumprod(1 - betas, 0)[-1])
    with pytest.raises(ValueError):
        s.alpha_bar(1000)


def test_step_with_true_noise_recovers_clean_image() -> None:
    s = DDIMSchedule()
    x0 = torch.rand(1, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    x_t = s.add_noise(x0, noise, torch.tensor([500]))
    assert torch.allclose(s.step(x_t, noise, 500, -1), x0, atol=1e-5)


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (8, 8), (5, 16)])
def test_odd_sizes_round_trip(tiny_model: DiffMamba, size: tuple[int, int]) -> None:
    cond = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = restore(tiny_model, cond, steps=2, seed=1)
    assert out.shape == cond.shape
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_seed_fixes_the_result(tiny_model: DiffMamba) -> None:
    cond = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        a = restore(tiny_model, cond, seed=7)
        b = restore(tiny_model, cond, seed=7)
        c = restore(tiny_model, cond, seed=8)
        d = restore(tiny_model, cond, x_T=initial_noise((1, 3, 16, 16), seed=7))
    assert torch.equal(a, b) and torch.equal(a, d)
    assert not torch.equal(a, c)


def test_bad_arguments_are_rejected(tiny_model: DiffMamba) -> None:
    cond = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError):
        restore(tiny_model, cond, steps=0)
    with pytest.raises(ValueError):
        restore(tiny_model, cond, steps=51)
    with pytest.raises(ValueError):
        restore(tiny_model, torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError):
        restore(tiny_model, cond, x_T=torch.randn(1, 3, 4, 4))


def test_gradients_flow_through_every_step(tiny_model: DiffMamba) -> None:
    model = DiffMamba(DiffMambaConfig(dim=8, num_blocks=(1, 1, 1, 1), d_state=4))
    out = restore(model, torch.rand(1, 3, 8, 8), steps=2, seed=0)
    out.mean().backward()
    assert model.patch_embed.proj.weight.grad is not None
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
