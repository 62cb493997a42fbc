"""Running a serialized TensorRT plan on torch CUDA tensors (execute_async_v3).

CPU tiles in, CPU outputs out like every engine; batches above the plan's profile maximum run in
chunks (StaticEngine), smaller ones run at their own size (the profile covers 1..max).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from service.engines.base import Engine, EngineError, StaticEngine, logger
from service.engines.onnx_export import OUTPUT_NAME
from service.engines.tensorrt_build import require_tensorrt


class TensorRTEngine(StaticEngine):
    name = "tensorrt"

    def __init__(self, plan: Path, kind: str, tile: int, max_batch: int, fallback: Engine,
                 device: torch.device) -> None:
        super().__init__(kind, tile, max_batch, fallback)
        trt = require_tensorrt()
        if device.type != "cuda":
            raise EngineError(f"the tensorrt engine runs on CUDA, not {device}")
        self.plan, self.device = Path(plan), device
        self._log = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._log)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.plan}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        logger.info("tensorrt engine %s on %s", self.plan.name, torch.cuda.get_device_name(device))

    def _run_static(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inputs = {"x": x.to(self.device, non_blocking=True).contiguous()}
            if t is not None:
                inputs["t"] = t.to(self.device, torch.float32, non_blocking=True).contiguous()
            for name, tensor in inputs.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
            out = torch.empty(shape, dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineError("TensorRT execution failed")
            result = out.cpu()  # synchronises the stream; inputs stay alive until here
        return result

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "file": str(self.plan)}
