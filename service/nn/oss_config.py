"""The sizes every VmambaIR network shares: the U-Net body and its OSS blocks.

The release's three networks (deraining ``Mamber32``, ``MambaRealSR11``, ``MambaSISR6``) are
one U-Net with different OSS channel branches, merges and heads. Each has its own config class
deriving from `OSSUNetConfig`, so its defaults are its published config and the registry can
tell the architectures apart by type; the fields here are what the body and the blocks read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar

from service.nn.norms import LAYER_NORM_TYPES

CHANNEL_MERGES: tuple[str, ...] = ("add", "multiply")
"""How the channel branch's per-channel vector c joins the gated scan output y:
``add`` is y + c (Mamber32), ``multiply`` is y·c + y (both SR networks)."""

ConfigT = TypeVar("ConfigT", bound="OSSUNetConfig")


@dataclass(frozen=True)
class OSSUNetConfig:
    """Body and block sizes. Defaults are the published deraining config (28.71 M)."""

    dim: int = 48
    num_blocks: tuple[int, int, int, int] = (3, 5, 7, 9)
    num_refinement_blocks: int = 2
    ffn_expansion_factor: float = 2.66
    bias: bool = False  # FFN and channel-reduction convs (the OSS convs always have one)
    layer_norm_type: str = "WithBias"  # norm1/norm2 only; the OSS module's norms are WithBias
    d_state: int = 16
    ssm_expand: float = 1.0  # the release's ssm_ratio: d_inner = expand · width
    dt_rank: int | None = None  # None: ceil(width / 16) at every level, as released
    # Features the pooled channel vector is lifted to by conv_cin (dc_inner); None: no lifting
    # convs, one feature per channel (MambaRealSR11).
    channel_lift: int | None = 4
    channel_dt_rank: int | None = 6  # None: the block's spatial dt rank (MambaRealSR11)
    channel_d_state: int = 16
    channel_merge: str = "add"
    inp_channels: int = 3
    out_channels: int = 3
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    #: The release's YAML names -> ours.
    RELEASE_NAMES: ClassVar[dict[str, str]] = {
        "LayerNorm_type": "layer_norm_type", "ssm_ratio": "ssm_expand",
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_blocks", tuple(int(n) for n in self.num_blocks))
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every inconsistency at once; subclasses append their own."""
        problems = []
        if len(self.num_blocks) != 4 or min(self.num_blocks) < 1:
            problems.append(f"num_blocks must be 4 positive ints, got {self.num_blocks}")
        if self.dim < 2 or self.dim % 2:
            problems.append(f"dim must be an even int >= 2, got {self.dim}")
        if self.num_refinement_blocks < 0:
            problems.append(f"num_refinement_blocks must be >= 0, got {self.num_refinement_blocks}")
        if self.layer_norm_type not in LAYER_NORM_TYPES:
            problems.append(
                f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {self.layer_norm_type!r}"
            )
        if self.channel_merge not in CHANNEL_MERGES:
            problems.append(
                f"channel_merge must be one of {CHANNEL_MERGES}, got {self.channel_merge!r}"
            )
        problems += [
            f"{name} must be >= 1" for name in ("d_state", "channel_d_state")
            if getattr(self, name) < 1
        ]
        problems += [
            f"{name} must be >= 1 or None, got {getattr(self, name)}"
            for name in ("dt_rank", "channel_lift", "channel_dt_rank")
            if getattr(self, name) is not None and getattr(self, name) < 1
        ]
        if int(self.ssm_expand * self.dim) < 1:
            problems.append(f"ssm_expand {self.ssm_expand} leaves no inner channels")
        return problems

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["num_blocks"] = list(self.num_blocks)
        return out

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        """Accepts our keys and the release's YAML names (``LayerNorm_type``, ``heads``, ...)."""
        data = dict(data)
        for theirs, ours in cls.RELEASE_NAMES.items():
            if theirs in data:
                data[ours] = data.pop(theirs)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: data.pop(k) for k in list(data) if k not in known}  # e.g. heads (unused)
        return cls(**data, extra=extra)
