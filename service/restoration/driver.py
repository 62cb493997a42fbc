"""The synchronous driver of any session: the CLI's, evaluation's, benchmarks' and the library's.

The service drives the same sessions through its batcher (service.runtime.batched); this loop
chunks each round's inputs into batches of ``max_batch`` on one device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from service.diffusion.sampler import DEFAULT_STEPS
from service.models.kinds import ModelKind
from service.restoration.plan import TilingPolicy, open_session
from service.restoration.protocol import RestorationSession
from service.thread_governor import govern_pass

Pass = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``run(x (B, C, h, w), t (B,) or None) -> (B, 3, sh, sw)``: an engine's ``run``, or a model
wrapped by ``model_pass``."""


def model_placement(model: object) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU/float32 otherwise)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def model_pass(model: Callable[..., torch.Tensor], kind: ModelKind,
               device: torch.device | str | None = None) -> Pass:
    """A network as a ``Pass``: inputs moved to its device and dtype, outputs back to the CPU."""
    model_device, dtype = model_placement(model)
    target = torch.device(device) if device is not None else model_device

    def run(x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        if target.type == "cpu":
            govern_pass()
        x = x.to(target, dtype)
        t = None if t is None else t.to(target)
        return kind.forward(model, x, t).float().cpu()

    return run


def run_session(
    session: RestorationSession,
    run: Pass,
    max_batch: int = 8,
    on_round: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Drive ``session`` to the end; ``on_round(i, n)`` after each round over all tiles.

    Inference only: the passes run under ``torch.inference_mode()`` (no activations kept),
    which is what keeps memory bounded by the batch.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    takes_t = session.kind.takes_timestep
    done_rounds = 0
    with torch.inference_mode():
        while not session.done:
            inputs, times = session.round_inputs()
            outputs: list[torch.Tensor] = []
            for start in range(0, len(inputs), max_batch):
                batch = torch.stack(inputs[start : start + max_batch])
                t = torch.tensor(times[start : start + max_batch]) if takes_t else None
                outputs.extend(run(batch, t).float().cpu().unbind(0))
            del inputs
            session.advance(outputs)
            done_rounds += 1
            if on_round is not None:
                on_round(done_rounds, session.rounds)
        result = session.result()
    return result.clone()  # a normal tensor, usable outside inference mode


def restore_image(
    model: Callable[..., torch.Tensor],
    kind: ModelKind,
    image: torch.Tensor,
    policy: TilingPolicy | None = None,
    *,
    steps: int | None = None,
    seed: int | None = None,
    max_batch: int = 8,
    device: torch.device | str | None = None,
    run: Pass | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, RestorationSession]:
    """One (1, 3, H, W) image through its kind's session; -> (restored, the session).

    ``run`` replaces the plain model pass (an engine with a checked precision).
    """
    session = open_session(kind, image, policy, steps=steps or DEFAULT_STEPS, seed=seed)
    out = run_session(session, run or model_pass(model, kind, device), max_batch, on_round)
    return out, session


def restore_one_pass(
    model: Callable[..., torch.Tensor],
    kind: ModelKind,
    images: torch.Tensor,
    on_pass: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, sH, sW) on the images' device, each image whole in one pass."""
    policy = TilingPolicy(whole_max_pixels=max(1, images.shape[-2] * images.shape[-1]))
    run = model_pass(model, kind)
    outs = []
    for i in range(images.shape[0]):
        session = open_session(kind, images[i : i + 1], policy)
        outs.append(run_session(session, run, 1, on_pass))
    return torch.cat(outs).to(images.device)
