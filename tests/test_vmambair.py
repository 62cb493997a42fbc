"""VmambaIR: the authors' output reproduced, strict loading and detection, scan backends agree.

The fixtures (tests/fixtures/vmambair) were made with the release's ``Mamber32`` class: a tiny
config with every parameter perturbed, its input and output, and the published config's
key -> shape manifest (28,709,875 parameters).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import service.scan as scan
from service.models import CheckpointError, load_checkpoint, load_model, write_safetensors
from service.models.detect_diffmamba import looks_like_diffmamba
from service.models.detect_vmambair import looks_like_vmambair
from service.nn.resample import use_channels_last
from service.nn.vmambair import OSSModule, VmambaIR, VmambaIRConfig, parameter_count

FIXTURES = Path(__file__).parent / "fixtures"
CKPT = FIXTURES / "vmambair" / "tiny_checkpoint.pth"
PUBLISHED_PARAMS = 28_709_875
TOL = 1e-4
SMALL = VmambaIRConfig(
    dim=12, num_blocks=(1, 2, 1, 2), num_refinement_blocks=0, ffn_expansion_factor=2.0,
    bias=True, layer_norm_type="BiasFree", d_state=8, ssm_expand=1.5, dt_rank=3,
    channel_lift=2, channel_dt_rank=3, channel_d_state=5,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: the machine is shared; restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(FIXTURES / "vmambair" / "tiny_expected.pt", weights_only=True)


def _params() -> dict[str, torch.Tensor]:
    return torch.load(CKPT, weights_only=True)["params"]


def _run(model: torch.nn.Module, x: torch.Tensor, backend: str) -> torch.Tensor:
    scan.set_backend(backend)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        scan.set_backend(None)


# ---------------------------------------------------------------- the authors' numbers
def test_detected_config_matches_fixture(expected: dict) -> None:
    loaded = load_checkpoint(CKPT)
    cfg = expected["config"]
    assert (loaded.arch, loaded.kind) == ("vmambair", "single_pass")
    assert loaded.config == VmambaIRConfig.from_dict(cfg)
    assert loaded.config.dim == cfg["dim"] and list(loaded.config.num_blocks) == cfg["num_blocks"]
    assert loaded.num_params == 246_690
    assert not loaded.model.training


@pytest.mark.parametrize("backend", ["reference", "chunked", "cpu"])
def test_output_matches_release(expected: dict, backend: str) -> None:
    if backend not in scan.available_backends():
        pytest.skip(f"{backend} backend unavailable")
    out = _run(load_model(CKPT), expected["input"], backend)
    assert out.shape == expected["output"].shape
    assert (out - expected["output"]).abs().max().item() < TOL


def test_cpu_route_is_fused_and_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numba route (fused spatial kernel) equals the reference scan on a trained-looking
    model, at a size with padding (13 x 21) and a batch of two."""
    if "cpu" not in scan.available_backends():
        pytest.skip("numba not installed")
    calls: list[int] = []
    original = OSSModule.spatial_gated_fused

    def spy(self: OSSModule, x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(self, x)

    monkeypatch.setattr(OSSModule, "spatial_gated_fused", spy)
    model = load_model(CKPT)
    x = torch.rand(2, 3, 13, 21, generator=torch.Generator().manual_seed(3))
    reference = _run(model, x, "reference")
    assert not calls
    fused = _run(model, x, "cpu")
    assert calls
    assert (fused - reference).abs().max().item() < TOL


def test_cpu_route_matches_reference_on_a_custom_config() -> None:
    """Expansion 1.5, BiasFree norms, biased convs, other channel-branch sizes."""
    if "cpu" not in scan.available_backends():
        pytest.skip("numba not installed")
    torch.manual_seed(1)
    model = VmambaIR(SMALL).eval()
    x = torch.rand(1, 3, 24, 16)
    assert (_run(model, x, "cpu") - _run(model, x, "reference")).abs().max().item() < TOL


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_channel_layer_norm_channels_last_is_the_same_function(kind: str) -> None:
    from service.nn.norms import ChannelLayerNorm

    norm = ChannelLayerNorm(6, kind)
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    x = torch.randn(2, 6, 5, 7) + 3
    expected = norm(x).permute(0, 2, 3, 1)
    assert torch.allclose(norm.forward_channels_last(x.permute(0, 2, 3, 1)), expected, atol=1e-5)


def test_cpu_route_gradients_match_reference() -> None:
    """Training on the CPU takes the fused kernel's backward: same gradients as the reference."""
    if "cpu" not in scan.available_backends():
        pytest.skip("numba not installed")
    model = load_model(CKPT)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    grads = {}
    for backend in ("reference", "cpu"):
        scan.set_backend(backend)
        try:
            for p in model.parameters():
                p.requires_grad_(True)
                p.grad = None
            model(x).square().mean().backward()
            grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
        finally:
            scan.set_backend(None)
    # Relative to each gradient's own scale; a few are zero but for rounding (conv_cout's bias
    # shifts every channel alike and channel_norm removes that), so the floor is global.
    floor = 1e-3 * max(g.abs().max().item() for g in grads["reference"].values())
    for name, ref in grads["reference"].items():
        err = (grads["cpu"][name] - ref).abs().max() / max(ref.abs().max().item(), floor)
        assert err.item() < 1e-3, name


def test_any_size_and_batch_independence() -> None:
    model = load_model(CKPT)
    gen = torch.Generator().manual_seed(5)
    for h, w in ((13, 21), (5, 7), (8, 8), (24, 17)):
        x = torch.rand(1, 3, h, w, generator=gen)
        assert _run(model, x, "chunked").shape == (1, 3, h, w)
    batch = torch.rand(3, 3, 16, 24, generator=gen)
    together = _run(model, batch, "cpu")
    for i in range(3):
        alone = _run(model, batch[i : i + 1], "cpu")
        # oneDNN blocks a batch of 3 differently from a batch of 1 (per instruction set and
        # thread count), reordering fp32 sums: rounding relative to the output's scale, not 0
        # (measured 1.2e-5 at outputs up to 3 on an AVX2 CPU).
        bound = 2e-5 * max(1.0, float(alone.abs().max()))
        assert (together[i : i + 1] - alone).abs().max().item() <= bound


# ---------------------------------------------------------------- loading and detection
def test_published_manifest_loads_strictly() -> None:
    manifest = json.loads((FIXTURES / "vmambair" / "official_state_dict.json").read_text())
    assert manifest["num_params"] == PUBLISHED_PARAMS
    assert parameter_count(VmambaIRConfig()) == PUBLISHED_PARAMS
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in manifest["keys"].items()}
    loaded = load_checkpoint({"params": sd})
    assert loaded.arch == "vmambair" and loaded.num_params == PUBLISHED_PARAMS
    assert loaded.config == VmambaIRConfig()  # dim 48, blocks 3,5,7,9, refinement 2, ...
    weights = loaded.model.state_dict()
    assert len(weights) == len(manifest["keys"]) == 1281
    for key in ("latent.8.attn.Ac_logs", "refinement.1.ffn.project_out.weight"):
        assert torch.equal(weights[key], sd[key])


def test_smaller_custom_config_is_detected(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VmambaIR(SMALL).eval()
    path = tmp_path / "custom.pth"
    torch.save({"params": model.state_dict()}, path)
    loaded = load_checkpoint(path)
    assert loaded.config == SMALL
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    # Like with like: the loader makes CPU weights channels-last, which changes the convolution
    # kernels (and so the rounding) with the instruction set; the original gets the same layout.
    use_channels_last(model)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(_run(loaded.model, x, "chunked"), _run(model, x, "chunked"))


def test_safetensors_round_trip_keeps_config(tmp_path: Path) -> None:
    src = load_checkpoint(CKPT)
    path = tmp_path / "derain.safetensors"
    write_safetensors(path, src.model.state_dict(), "vmambair", src.config.to_dict())
    loaded = load_checkpoint(path)
    assert loaded.arch == "vmambair" and loaded.config == src.config
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(_run(loaded.model, x, "chunked"), _run(src.model, x, "chunked"))


def test_missing_key_is_named() -> None:
    sd = _params()
    del sd["decoder_level2.0.attn.Dsc"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): decoder_level2.0.attn.Dsc"):
        load_model(sd)


def test_wrong_shape_is_named() -> None:
    sd = _params()
    sd["encoder_level2.0.attn.A_logs"] = torch.zeros(64, 15)
    with pytest.raises(CheckpointError,
                       match=r"encoder_level2.0.attn.A_logs: checkpoint \(64, 15\) vs model "
                             r"\(64, 16\)"):
        load_model(sd)


def test_unexpected_key_is_named() -> None:
    sd = _params()
    sd["refinement.0.attn.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): refinement.0.attn.extra"):
        load_model(sd)


def test_detection_does_not_confuse_the_two_architectures() -> None:
    vmambair = _params()
    diffmamba = torch.load(FIXTURES / "diffmamba" / "tiny_withbias_checkpoint.pth",
                           weights_only=True)["params_ema"]
    assert looks_like_vmambair(vmambair) and not looks_like_diffmamba(vmambair)
    assert looks_like_diffmamba(diffmamba) and not looks_like_vmambair(diffmamba)
    assert load_checkpoint(vmambair).arch == "vmambair"
    assert load_checkpoint(diffmamba).arch == "diffmamba"
    with pytest.raises(CheckpointError, match="ambiguous"):
        load_model({**diffmamba, **vmambair})


def test_config_dict_round_trip_and_release_names() -> None:
    cfg = VmambaIRConfig.from_dict({"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 2, 4, 8],
                                    "LayerNorm_type": "BiasFree", "ssm_ratio": 2.0})
    assert cfg.layer_norm_type == "BiasFree" and cfg.ssm_expand == 2.0
    assert cfg.extra == {"heads": [1, 2, 4, 8]}
    assert VmambaIRConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="dim must be an even"):
        VmambaIRConfig(dim=7)
