"""One optimisation step: forward under autocast, loss, backward, optimizer step.

Shared by the eager loop and the CUDA-graph step (tumorseg.training.cuda_graph), which records exactly this
function, so the two cannot drift apart: a change to how a step trains is made once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def optimisation_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                      autocast: Callable[[], object], x: torch.Tensor, y: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """Train ``module`` on one batch and return its loss (a device tensor, not read here: reading it would make a GPU
    wait). Gradients are not zeroed here: the caller does that before (eager) or once before capture (a graph)."""
    with autocast():
        logits = module(x)
    loss = loss_fn(logits, y, weights)
    loss.backward()
    optimizer.step()
    return loss
