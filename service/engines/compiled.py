"""torch.compile of the network for full tiles, with the scan mixers left to their kernels.

Why the mixers stay eager: the fast scans (numba on the CPU, mamba-ssm on CUDA) are opaque to
dynamo, and tracing the network whole would swap them for the chunked closed form, which on the
CPU is many times slower than the numba kernel. With each mixer behind a graph break
(``mixers.make_mixers_opaque``) inductor fuses what lies between them — the channel LayerNorms,
the time-embedding adds, the gated FFN's element-wise ops — and the scans keep their kernels.

Shapes: static, like the other built engines. Compiled for the tile shape at the batch sizes
1, 2, 4, …, max_batch (warm-up compiles each), a partial batch padded up to the next one; other
tile shapes run eagerly, so odd image sizes never trigger a compile. Why not a dynamic batch:
the network's blocks share one forward, so dynamo's automatic dynamic shapes would also make
every level's height and width symbolic, and the feed-forward's CPU strips (a loop over rows)
would then recompile per level until dynamo's recompile limit sent the rest back to eager
(measured: a 167 s build, and no faster).
"""

from __future__ import annotations

from typing import Any

import torch
import torch._dynamo.config as dynamo_config

from service.engines.base import StaticEngine, logger, pad_batch, padded_batch_sizes
from service.engines.eager import TorchEngine, forward
from service.engines.mixers import make_mixers_opaque
from service.thread_governor import govern_pass

GRAPHS_PER_SIZE = 32
"""Graphs one code object may need per batch size: one per distinct block shape (levels,
refinement) with room to spare; the recompile limit is raised to this times the sizes."""


class CompiledEngine(StaticEngine):
    name = "compile"

    def __init__(self, eager: TorchEngine, tile: int, max_batch: int) -> None:
        super().__init__(eager.kind, tile, max_batch, eager)
        self.eager = eager
        self.sizes = padded_batch_sizes(max_batch)
        opaque = make_mixers_opaque(eager.model)
        limit = GRAPHS_PER_SIZE * len(self.sizes)
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, limit)
        self.compiled = torch.compile(eager.model, dynamic=False)
        logger.info("torch.compile engine: %d scan mixers run eagerly between compiled graphs; "
                    "batch sizes %s", opaque, self.sizes)

    def _run_static(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        b = x.shape[0]
        size = next(s for s in self.sizes if s >= b)
        if self.eager.device.type == "cpu":
            govern_pass()
        with torch.inference_mode():
            x = pad_batch(x, size).to(self.eager.device, non_blocking=True)
            t = None if t is None else pad_batch(t, size).to(self.eager.device)
            with self.eager.autocast():
                out = forward(self.compiled, self.kind, x, t)
            return out[:b].float().cpu()

    def warm_up(self) -> None:
        self.eager.warm_up()
        for size in self.sizes:
            self.run(*self.warm_inputs(size))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.eager.precision,
                "compiled_batch_sizes": self.sizes}
