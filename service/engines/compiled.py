"""torch.compile of the network for full tiles, with the scan mixers left to their kernels.

Why the mixers stay eager: the fast scans (numba on the CPU, mamba-ssm on CUDA) are opaque to
dynamo, and tracing the network whole would swap them for the chunked closed form, which on the
CPU is many times slower than the numba kernel. With each mixer behind a graph break
(``mixers.make_mixers_opaque``) inductor fuses what lies between them — the channel LayerNorms,
the time-embedding adds, the gated FFN's element-wise ops — and the scans keep their kernels.

Shapes: compiled for the tile shape only (other shapes run eagerly, so odd image sizes never
trigger a recompile). Warm-up runs batch 1 and batch 2: dynamo then compiles batch 1 and one
graph with a dynamic batch dimension that serves every larger batch.
"""

from __future__ import annotations

from typing import Any

import torch

from service.engines.base import StaticEngine, logger
from service.engines.eager import TorchEngine, forward
from service.engines.mixers import make_mixers_opaque


class CompiledEngine(StaticEngine):
    name = "compile"

    def __init__(self, eager: TorchEngine, tile: int, max_batch: int) -> None:
        super().__init__(eager.kind, tile, max_batch, eager)
        self.eager = eager
        opaque = make_mixers_opaque(eager.model)
        self.compiled = torch.compile(eager.model, dynamic=None)
        logger.info("torch.compile engine: %d scan mixers run eagerly between compiled graphs",
                    opaque)

    def _run_static(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.eager.device, non_blocking=True)
            t = None if t is None else t.to(self.eager.device)
            with self.eager.autocast():
                out = forward(self.compiled, self.kind, x, t)
            return out.float().cpu()

    def warm_up(self) -> None:
        self.eager.warm_up()
        for batch in sorted({1, min(2, self.max_batch)}):
            self.run(*self.warm_inputs(batch))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.eager.precision}
