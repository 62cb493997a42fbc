"""VmambaIR's ×4 SR networks: the authors' output reproduced, ``params_ema`` used, strict loading.

The fixtures (tests/fixtures/vmambair_sr, tests/fixtures/vmambair_sisr) were made with the
release's ``MambaRealSR11`` and ``MambaSISR6`` classes: a tiny config with every parameter
perturbed, stored as BasicSR ``{'params', 'params_ema'}`` where ``params`` is a decoy; a 21×13
input, its reflect-padded 24×16 version, the bare network's 96×64 output and the 84×52 crop;
and the published config's key -> shape manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import service.scan as scan
from service.models import CheckpointError, load_checkpoint, load_model, write_safetensors
from service.models.registry import ARCHITECTURES, SUPER_RESOLUTION
from service.nn.oss_config import OSSUNetConfig
from service.nn.vmambair_sr import (
    MambaRealSR11Config,
    MambaSISR6Config,
    VmambaSR,
    sr_parameter_count,
)

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-4  # the spatial-scan mistakes the fixtures catch move the output by 1e-2 .. 1e-3


@dataclass(frozen=True)
class Net:
    arch: str
    folder: str
    config_type: type[OSSUNetConfig]
    tiny_params: int
    published_params: int
    published_tensors: int

    @property
    def checkpoint(self) -> Path:
        return FIXTURES / self.folder / "tiny_checkpoint.pth"

    def expected(self) -> dict:
        return torch.load(FIXTURES / self.folder / "tiny_expected.pt", weights_only=True)

    def raw(self) -> dict:
        return torch.load(self.checkpoint, weights_only=True)


NETS = {
    "mambarealsr11": Net("mambarealsr11", "vmambair_sr", MambaRealSR11Config,
                         402_851, 10_497_813, 744),
    "mambasisr6": Net("mambasisr6", "vmambair_sisr", MambaSISR6Config,
                      284_094, 12_028_273, 1565),
}
BACKENDS = ("reference", "chunked", "cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: the machine is shared; restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=list(NETS))
def net(request: pytest.FixtureRequest) -> Net:
    return NETS[request.param]


def _run(model: torch.nn.Module, x: torch.Tensor, backend: str = "reference") -> torch.Tensor:
    if backend not in scan.available_backends():
        pytest.skip(f"{backend} backend unavailable")
    scan.set_backend(backend)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        scan.set_backend(None)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- the authors' numbers
def test_detected_arch_config_and_registry_entry(net: Net) -> None:
    loaded = load_checkpoint(net.checkpoint)
    expected = net.expected()
    assert (loaded.arch, loaded.kind) == (net.arch, SUPER_RESOLUTION)
    assert type(loaded.config) is net.config_type
    assert loaded.config == net.config_type.from_dict(expected["config"])
    assert loaded.num_params == net.tiny_params
    assert not loaded.model.training
    entry = ARCHITECTURES[net.arch]
    assert (entry.scale, entry.pad_multiple) == (expected["scale"], expected["window_size"])
    assert (entry.scale, entry.pad_multiple) == (4, 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bare_network_matches_release(net: Net, backend: str) -> None:
    """Sides already multiples of 8: (B, 3, H, W) -> (B, 3, 4H, 4W), the release's numbers."""
    expected = net.expected()
    out = _run(load_model(net.checkpoint), expected["padded_input"], backend)
    assert out.shape == (1, 3, 96, 64)
    assert _max_diff(out, expected["padded_output"]) < TOL


def test_padded_path_matches_release(net: Net) -> None:
    """Reflect-pad right/bottom to a multiple of 8, run, crop to 4h × 4w: the release's test
    pipeline; the network does it itself for any size, with the same numbers."""
    expected = net.expected()
    x = expected["input"]
    h, w = x.shape[-2:]
    entry = ARCHITECTURES[net.arch]
    pad = (0, -w % entry.pad_multiple, 0, -h % entry.pad_multiple)
    padded = F.pad(x, pad, mode="reflect")
    assert torch.equal(padded, expected["padded_input"])
    model = load_model(net.checkpoint)
    cropped = _run(model, padded)[..., : entry.scale * h, : entry.scale * w]
    assert _max_diff(cropped, expected["output"]) < TOL
    direct = _run(model, x)
    assert direct.shape == (1, 3, 84, 52)
    assert _max_diff(direct, expected["output"]) < TOL


def test_params_ema_is_used_not_params(net: Net) -> None:
    raw = net.raw()
    loaded = load_checkpoint(net.checkpoint).model.state_dict()
    decoy = [k for k in raw["params"] if not torch.equal(raw["params"][k], raw["params_ema"][k])]
    assert decoy  # the fixture's two state dicts differ
    for key in decoy:
        assert torch.equal(loaded[key], raw["params_ema"][key])
    expected = net.expected()
    wrong = _run(load_model({"params": raw["params"]}), expected["padded_input"])
    assert _max_diff(wrong, expected["padded_output"]) > 1.0  # the fixture tells them apart


def test_batch_samples_are_independent() -> None:
    model = load_model(NETS["mambarealsr11"].checkpoint)
    batch = torch.rand(2, 3, 16, 8, generator=torch.Generator().manual_seed(5))
    together = _run(model, batch, "chunked")
    assert together.shape == (2, 3, 64, 32)
    for i in range(2):
        alone = _run(model, batch[i : i + 1], "chunked")
        # batch-dependent kernel blocking reorders fp32 sums: relative to the output's scale
        bound = 2e-5 * max(1.0, float(alone.abs().max()))
        assert _max_diff(together[i : i + 1], alone) <= bound


# ---------------------------------------------------------------- loading
def test_published_manifest_loads_strictly(net: Net) -> None:
    manifest = json.loads((FIXTURES / net.folder / "official_state_dict.json").read_text())
    assert manifest["num_params"] == net.published_params
    assert len(manifest["keys"]) == manifest["num_tensors"] == net.published_tensors
    published = net.config_type()
    assert published == net.config_type.from_dict(manifest["config"])
    assert sr_parameter_count(published) == net.published_params
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in manifest["keys"].items()}
    loaded = load_checkpoint({"params_ema": sd})
    assert loaded.arch == net.arch and loaded.config == published
    assert loaded.num_params == net.published_params
    weights = loaded.model.state_dict()
    assert list(weights) == list(manifest["keys"])  # the release's names and order
    for key in ("latent.0.attn.Ac_logs", "refinement.5.ffn.project_out.weight", "tail.1.bias"):
        assert torch.equal(weights[key], sd[key])


def test_stride_zero_channel_parameters_are_normal_tensors() -> None:
    """The release's lift-free channel branch holds Ac_logs/Dsc as stride-0 views of one row;
    ours are ordinary parameters, so a checkpoint saved from such views loads, and the loaded
    rows stay independent."""
    sd = NETS["mambarealsr11"].raw()["params_ema"]
    key = "encoder_level1.0.attn.Ac_logs"
    sd[key] = sd[key][:1].expand(2, -1)
    sd["encoder_level1.0.attn.Dsc"] = sd["encoder_level1.0.attn.Dsc"][:1].expand(2)
    assert sd[key].stride() == (0, 1)
    model = load_model(sd)
    param = dict(model.named_parameters())[key]
    assert param.stride()[0] != 0 and torch.equal(param, sd[key])
    with torch.no_grad():
        param[0].add_(1.0)
    assert not torch.equal(param[0], param[1])


def test_safetensors_round_trip(net: Net, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = load_checkpoint(net.checkpoint)
    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, src.model.state_dict(), net.arch, src.config.to_dict())
    bare = tmp_path / "bare.safetensors"  # no metadata: detected from the keys
    save_file({k: v.contiguous() for k, v in net.raw()["params_ema"].items()}, str(bare))
    x = net.expected()["padded_input"]
    reference = _run(src.model, x, "chunked")
    for path in (ours, bare):
        loaded = load_checkpoint(path)
        assert loaded.arch == net.arch and loaded.config == src.config
        assert torch.equal(_run(loaded.model, x, "chunked"), reference)


def test_missing_and_unexpected_keys_are_named() -> None:
    sd = NETS["mambasisr6"].raw()["params_ema"]
    del sd["decoder_level1.1.attn.conv_cout.bias"]
    sd["tail.2.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): decoder_level1.1.attn.conv_co"
                                              r"ut.bias; unexpected keys \(1\): tail.2.weight"):
        load_model(sd)


def test_config_names_defaults_and_validation() -> None:
    cfg = MambaRealSR11Config.from_dict({
        "inp_channels": 3, "out_channels": 3, "scale": 4, "dim": 8, "num_blocks": [1, 1, 1, 1],
        "num_refinement_blocks": 1, "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.66,
        "bias": True, "LayerNorm_type": "BiasFree",
    })
    assert cfg.layer_norm_type == "BiasFree" and cfg.extra == {"heads": [1, 2, 4, 8]}
    assert (cfg.channel_lift, cfg.channel_dt_rank, cfg.channel_merge) == (None, None, "multiply")
    assert MambaRealSR11Config.from_dict(cfg.to_dict()) == cfg
    sisr = MambaSISR6Config()
    assert (sisr.num_blocks, sisr.num_refinement_blocks) == ((15, 1, 1, 1), 15)
    assert (sisr.channel_lift, sisr.channel_dt_rank, sisr.channel_merge) == (4, 6, "multiply")
    assert cfg != MambaSISR6Config.from_dict(cfg.to_dict())  # the type is part of the identity
    with pytest.raises(ValueError, match="scale must be 4"):
        MambaRealSR11Config(scale=2)
    with pytest.raises(ValueError, match="channel_merge"):
        MambaSISR6Config(channel_merge="concat")


def test_custom_config_is_detected(tmp_path: Path) -> None:
    """BiasFree norms, biased FFN/reduction convs, another width and depth: read off the keys."""
    cfg = MambaRealSR11Config(dim=6, num_blocks=(1, 2, 1, 1), num_refinement_blocks=1,
                              bias=True, layer_norm_type="BiasFree", ffn_expansion_factor=2.0)
    torch.manual_seed(0)
    model = VmambaSR(cfg).eval()
    path = tmp_path / "custom.pth"
    torch.save({"params_ema": model.state_dict()}, path)
    loaded = load_checkpoint(path)
    assert loaded.config == cfg
    x = torch.rand(1, 3, 8, 16)
    # The loaded copy runs channels-last (service.nn.resample.use_channels_last): rounding only.
    assert _max_diff(_run(loaded.model, x, "chunked"), _run(model, x, "chunked")) < 1e-5
