"""A training step replayed as one CUDA graph (``train.cuda_graph``).

On a fast GPU an eager training step of these models is bound by the host, not by arithmetic: Python, autograd and
one kernel launch per operation (~800-1,700 of them per step) cost more than the kernels themselves, so the step takes
the same time whatever the batch size (bench/results/gpu.md). A CUDA graph records the step's kernels once and
replays them with one launch. This is PyTorch's "whole network capture" (CUDA graphs notes): forward, loss, backward
and the optimizer step are captured together, reading the batch from fixed input buffers.

What capture requires, and how it is met here:

- fixed shapes: every batch of a training has the same shape (whole slices or fixed patches, ``steps x batch_size``
  samples per epoch); a batch of another shape raises;
- no host synchronisation inside the step: the loss is returned as a device tensor;
- a capturable optimizer whose learning rate is a device tensor (AdamW ``fused=True, capturable=True``), set with
  ``set_lr`` outside the graph before each step;
- warm-up before capture, on a side stream (cuDNN autotuning, the optimizer's state, autograd's buffers): the first
  ``warmup_steps`` steps run eagerly, as real training steps; the next is captured, then replayed, so every batch is
  trained on exactly once and in order;
- autocast without its weight-cast cache (a cache filled outside the graph would be read inside it).

The replayed step updates the model's own parameters, buffers and the optimizer's state in place, so validation,
checkpoints and saving read the model as in an eager run. Values match an eager run up to the nondeterminism cuDNN
autotuning already has.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from tumorseg.training.step import LossFn, optimisation_step


def capturable_adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW whose step can be captured: fused kernel, state and learning rate on the device."""
    return torch.optim.AdamW(params, lr=torch.tensor(float(lr), device=device), weight_decay=weight_decay, fused=True,
                             capturable=True)


def lr_to_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make every group's learning rate a tensor on ``device`` (a resumed optimizer's comes back as a host tensor or a
    float; a captured step reads it on the GPU)."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate, in place where it is a tensor (a captured step reads that tensor)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


class GraphedTrainStep:
    """``step(x, y, weights) -> loss``: forward (under ``autocast``), ``loss_fn``, backward and ``optimizer.step()`` of
    ``module``, eager for the first ``warmup_steps`` calls, then captured once and replayed.

    The returned loss is a device tensor that the next call overwrites: read it (or add it to an accumulator) before
    calling again."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 autocast: Callable[[], object], warmup_steps: int = 3):
        if warmup_steps < 1:
            raise ValueError("warmup_steps must be >= 1: cuDNN autotuning and the optimizer's state come before capture")
        self.module, self.optimizer, self.loss_fn, self.autocast = module, optimizer, loss_fn, autocast
        self.warmup_steps = warmup_steps
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor | None] | None = None
        self.loss: torch.Tensor | None = None
        self.side_stream: torch.cuda.Stream | None = None

    def _forward_backward(self, x, y, weights) -> torch.Tensor:
        return optimisation_step(self.module, self.optimizer, self.loss_fn, self.autocast, x, y, weights)

    def _load(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> None:
        given = [x, y, weights]
        if self.inputs is None:
            self.inputs = [None if t is None else t.detach().clone() for t in given]  # clone keeps channels_last
            return
        for name, buffer, t in zip(("images", "targets", "weights"), self.inputs, given):
            if (buffer is None) != (t is None) or (t is not None and (t.shape != buffer.shape or t.dtype != buffer.dtype)):
                raise ValueError(f"train.cuda_graph: the {name} of this batch ({None if t is None else tuple(t.shape)}) differ "
                                 f"from the captured step's ({None if buffer is None else tuple(buffer.shape)}); a graph "
                                 "replays fixed shapes")
            if t is not None:
                buffer.copy_(t)

    def _warm_up(self) -> torch.Tensor:
        """One eager step on a side stream, as capture requires of the steps before it."""
        if self.side_stream is None:
            self.side_stream = torch.cuda.Stream()
        self.side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side_stream), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # eager steps of a capturable AdamW
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._forward_backward(*self.inputs)
        torch.cuda.current_stream().wait_stream(self.side_stream)
        loss.record_stream(torch.cuda.current_stream())  # made on the side stream, read (and freed) on this one
        return loss

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Gradients are None at capture, so the captured backward writes them (no accumulation) into the graph's
        memory, where every replay writes them again: zero_grad must not run between replays."""
        self.optimizer.zero_grad(set_to_none=True)
        return self._record()

    def _record(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Record the step reading the input buffers (nothing runs)."""
        graph = torch.cuda.CUDAGraph()
        # A torch.compile'd module must not compile during capture (that fails deep inside); make it say so plainly
        with torch.compiler.set_stance("fail_on_recompile"), torch.cuda.graph(graph):
            loss = self._forward_backward(*self.inputs)
        return graph, loss

    def release(self) -> None:
        """Drop the graph, its memory (activations, gradients) and the input buffers once training is over, so that
        saving and logging the model do not run beside a training step's worth of reserved GPU memory."""
        self.graph = self.loss = self.inputs = None
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        self._load(x, y, weights)
        if self.graph is None and self.calls < self.warmup_steps:
            self.calls += 1
            return self._warm_up()
        if self.graph is None:
            self.graph, self.loss = self._capture()
        self.graph.replay()  # right after capture too: capture records without running, this batch is trained on here
        return self.loss
