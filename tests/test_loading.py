"""Checkpoint loading: detection from keys, strictness, safety and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.models import CheckpointError, load_checkpoint, load_model, write_safetensors
from service.nn import DiffMamba, DiffMambaConfig

FIXTURES = Path(__file__).parent / "fixtures" / "diffmamba"


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_published_manifest_loads_strictly(kind: str) -> None:
    manifest = json.loads((FIXTURES / f"official_state_dict_{kind}.json").read_text())
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in manifest["keys"].items()}
    loaded = load_checkpoint({"params": sd})
    assert loaded.num_params == manifest["num_params"]
    assert loaded.config.dim == 48 and loaded.config.num_blocks == (4, 6, 6, 8)
    assert loaded.config.d_state == 32 and loaded.config.layer_norm_type == kind
    weights = loaded.model.state_dict()
    assert len(weights) == len(manifest["keys"])
    key = "latent.7.self_attention.A_logs"
    assert torch.equal(weights[key], sd[key])


def test_smaller_custom_config_is_detected(tmp_path: Path) -> None:
    cfg = DiffMambaConfig(
        dim=12, num_blocks=(1, 2, 2, 3), d_state=8, ssm_expand=1.5,
        ffn_expansion_factor=2.0, layer_norm_type="BiasFree",
    )
    torch.manual_seed(0)
    model = DiffMamba(cfg)
    path = tmp_path / "custom.pth"
    torch.save({"params_ema": model.state_dict()}, path)
    loaded = load_checkpoint(path)
    for field in ("dim", "num_blocks", "d_state", "layer_norm_type"):
        assert getattr(loaded.config, field) == getattr(cfg, field)
    rebuilt = DiffMamba(loaded.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    inp, t = torch.rand(1, 6, 16, 16), torch.tensor([10.0])
    with torch.no_grad():
        assert torch.allclose(loaded.model(inp, t), model.eval()(inp, t), atol=1e-5)


def test_safetensors_round_trip_keeps_config(tmp_path: Path) -> None:
    src = load_checkpoint(FIXTURES / "tiny_biasfree_checkpoint.pth")
    path = tmp_path / "denoise.safetensors"
    write_safetensors(path, src.model.state_dict(), "diffmamba", src.config.to_dict())
    loaded = load_checkpoint(path)
    assert loaded.config == src.config
    assert loaded.sha256 is not None and len(loaded.sha256) == 64
    inp, t = torch.rand(2, 6, 16, 24), torch.tensor([750.0, 0.0])
    with torch.no_grad():
        assert torch.equal(loaded.model(inp, t), src.model(inp, t))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_custom_object_is_refused(tmp_path: Path) -> None:
    sd = torch.load(FIXTURES / "tiny_withbias_checkpoint.pth", weights_only=True)
    sd["extra"] = Evil()
    path = tmp_path / "evil.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)


def test_truncated_file_gives_clear_error(tmp_path: Path) -> None:
    data = (FIXTURES / "tiny_withbias_checkpoint.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)


def test_missing_keys_are_named() -> None:
    sd = torch.load(FIXTURES / "tiny_withbias_checkpoint.pth", weights_only=True)["params_ema"]
    del sd["decoder_level2.0.ffn.dwconv.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): decoder_level2.0.ffn.dwconv"):
        load_model(sd)


def test_wrong_shape_is_named() -> None:
    sd = torch.load(FIXTURES / "tiny_withbias_checkpoint.pth", weights_only=True)["params_ema"]
    sd["encoder_level2.0.self_attention.Ds"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"level2.0.self_attention.Ds: checkpoint \(7,\)"):
        load_model(sd)


def test_unexpected_keys_are_named() -> None:
    sd = torch.load(FIXTURES / "tiny_withbias_checkpoint.pth", weights_only=True)["params_ema"]
    sd["head.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): head.extra.weight"):
        load_model(sd)


def test_unknown_architecture_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="unrecognised architecture"):
        load_model({"conv.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(garbage)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_model({"params": {"a": 1}})


def test_cpu_load_uses_channels_last_with_the_same_output() -> None:
    """CPU inference runs channels-last (faster convolutions); the numbers do not change, and
    training can ask for the plain layout."""
    path = FIXTURES / "tiny_withbias_checkpoint.pth"
    fast = load_checkpoint(path).model
    plain = load_checkpoint(path, channels_last=False).model
    stem = fast.patch_embed.proj.weight
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    assert plain.patch_embed.proj.weight.is_contiguous()
    x = torch.rand(2, 6, 40, 24, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999.0, 250.0])
    with torch.inference_mode():
        torch.testing.assert_close(fast(x, t), plain(x, t), rtol=0, atol=1e-5)
