"""Eager torch on CUDA replayed from CUDA graphs, one graph per batch size, for full tiles.

Why: at tile batch sizes a Diff-Mamba pass is hundreds of small kernels, so launch overhead, not
arithmetic, bounds it; a captured graph replays them all with one launch. Graphs need fixed
shapes and addresses, so each captured batch size (1, 2, 4, …, max_batch) owns static input
buffers; a batch is padded up to the next captured size (pad rows are computed and dropped:
rows never interact, every op is per sample) and its rows sliced back out. Other shapes run
eagerly.

All graphs share one memory pool. That is safe here because replays never overlap (one batch
at a time, under StaticEngine's lock) and each replay's output is copied to the host before the
next replay may reuse the pool's intermediates.

A capture that fails, or replays that disagree with eager on the warm-up tile, turn graphs off
with an error log: the engine then runs eagerly, never wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from service.engines.base import StaticEngine, logger
from service.engines.base import padded_batch_sizes as capture_sizes
from service.engines.eager import TorchEngine
from service.engines.warmup import warmup_inputs

REPLAY_TOLERANCE = 1e-3
"""Max |replay − eager| relative to eager's max |value| on the warm-up tile (same kernels, so
any real difference means a capture problem, not rounding)."""


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    t: torch.Tensor | None
    out: torch.Tensor


class CudaGraphEngine(StaticEngine):
    name = "cuda_graphs"

    def __init__(self, eager: TorchEngine, tile: int, max_batch: int) -> None:
        super().__init__(eager.kind, tile, max_batch, eager)
        if eager.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.eager, self.device = eager, eager.device
        self.sizes = capture_sizes(max_batch)
        self.graphs: dict[int, _Graph] = {}
        self.enabled = True

    def _capture(self, batch: int, pool: Any) -> _Graph:
        x, t = warmup_inputs(self.kind, self.tile, batch)
        x = x.to(self.device)
        t = None if t is None else t.to(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # lazy initialisation (cuBLAS handles, kernels) off the graph
                self.eager.forward_device(x, t)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
            out = self.eager.forward_device(x, t)
        return _Graph(graph, x, t, out)

    def capture_all(self) -> None:
        """Capture every size, then check the batch-1 replay against eager."""
        pool = torch.cuda.graph_pool_handle()
        try:
            with torch.cuda.device(self.device):
                for size in self.sizes:
                    self.graphs[size] = self._capture(size, pool)
            x, t = warmup_inputs(self.kind, self.tile, 1)
            replay = self._run_static(x, t)
            expected = self.eager.run(x, t)
            scale = float(expected.abs().max()) or 1.0
            error = float((replay - expected).abs().max()) / scale
            if not error <= REPLAY_TOLERANCE:
                raise RuntimeError(f"replay differs from eager by {error:.2e} (relative)")
        except Exception as exc:
            self.enabled, self.graphs = False, {}
            logger.error("CUDA graphs disabled, running eagerly: %s: %s", type(exc).__name__,
                         exc)
            return
        logger.info("CUDA graphs captured for tile %d, batch sizes %s", self.tile, self.sizes)

    def _replay(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        b = x.shape[0]
        size = next(s for s in self.sizes if s >= b)
        g = self.graphs[size]
        g.x[:b].copy_(x, non_blocking=True)
        if g.t is not None and t is not None:
            g.t[:b].copy_(t, non_blocking=True)
        g.graph.replay()
        return g.out[:b].float().cpu()

    def _run_static(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        if not self.enabled:
            return self.eager.run(x, t)
        with torch.inference_mode(), torch.cuda.device(self.device):
            return self._replay(x, t)

    def warm_up(self) -> None:
        self.eager.warm_up()
        if not self.graphs and self.enabled:
            self.capture_all()
        self.run(*self.warm_inputs())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "captured_batch_sizes": sorted(self.graphs),
                "precision": self.eager.precision}
