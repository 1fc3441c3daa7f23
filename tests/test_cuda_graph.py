"""train.cuda_graph: the step's protocol (warm-up, one capture, replays on the input buffers) checked on the CPU, where
capture itself is replaced by a recorder; the capture proper runs on a GPU only (bench/gpu.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tumorseg.models.blocks as blocks
from tumorseg.config import SettingError
from tumorseg.models.blocks import DecoderBlock
from tumorseg.training import cuda_graph
from tumorseg.training.cuda_graph import GraphedTrainStep, set_lr
from tumorseg.training.losses import segmentation_loss
from tumorseg.training.settings import ModelSettings, TrainSettings


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 3, 3, padding=1))


def batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 4, 12, 12, generator=g), (torch.rand(4, 3, 12, 12, generator=g) > 0.6).float()) for _ in range(n)]


def loss_fn(logits, y, w):
    return segmentation_loss(logits, y, 1.0, 1.0, w)


@pytest.fixture
def recorded_capture(monkeypatch):
    """No CUDA here: streams become no-ops, and capture records the step instead of running it; a replay runs the
    recorded step on the input buffers, writing the gradients afresh as a replayed graph does. What a real capture
    requires of its caller is asserted at capture: no gradients yet (else every replay would add onto them) and the
    learning rates as tensors (a float would be baked into the graph)."""
    dummy = SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(cuda_graph.torch.cuda, "Stream", lambda: dummy)
    monkeypatch.setattr(cuda_graph.torch.cuda, "current_stream", lambda: dummy)
    monkeypatch.setattr(cuda_graph.torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    captures = []

    def record(self):
        captures.append(1)
        assert all(p.grad is None for p in self.module.parameters()), "gradients exist at capture"
        assert all(isinstance(g["lr"], torch.Tensor) for g in self.optimizer.param_groups), "a float lr would be baked in"
        loss = torch.zeros(())

        def replay():
            self.optimizer.zero_grad(set_to_none=True)
            loss.copy_(self._forward_backward(*self.inputs).detach())

        return SimpleNamespace(replay=replay), loss

    monkeypatch.setattr(GraphedTrainStep, "_record", record)
    return captures


def test_graphed_step_trains_each_batch_once_in_order_like_eager(recorded_capture):
    """3 eager warm-up steps, then one capture, then replays: the weights after 7 batches (learning rate changing every
    step) equal an eager loop's exactly, and so does every step's loss. A capture step that did not also replay or a
    replay that read stale buffers would differ, and the recorder asserts capture's preconditions (no gradients: a
    capture without zero_grad before it fails here, checked; learning rates as tensors)."""
    data = batches(7)
    lrs = [1e-2 * (0.7 ** i) for i in range(7)]
    eager = tiny_model()
    opt = torch.optim.AdamW(eager.parameters(), lr=torch.tensor(lrs[0]), foreach=False)
    eager_losses = []
    for (x, y), lr in zip(data, lrs):
        set_lr(opt, lr)
        loss = loss_fn(eager(x), y, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        eager_losses.append(float(loss.detach()))

    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(lrs[0]), foreach=False)
    step = GraphedTrainStep(model, opt, loss_fn, contextlib.nullcontext, warmup_steps=3)
    losses = []
    for (x, y), lr in zip(data, lrs):
        set_lr(opt, lr)
        losses.append(float(step(x, y)))
    assert recorded_capture == [1]
    assert losses == eager_losses
    for a, b in zip(eager.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_graphed_step_refuses_a_batch_of_another_shape(recorded_capture):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3), foreach=False)
    step = GraphedTrainStep(model, opt, loss_fn, contextlib.nullcontext, warmup_steps=1)
    x, y = batches(1)[0]
    step(x, y)
    with pytest.raises(ValueError, match="cuda_graph.*images.*\\(2, 4, 12, 12\\)"):
        step(x[:2], y[:2])
    with pytest.raises(ValueError, match="weights"):
        step(x, y, torch.ones(4, 12, 12))


def test_a_resumed_optimizer_gets_its_learning_rate_back_as_a_tensor_that_set_lr_moves(tmp_path):
    """The resume path of the loop: the optimizer's state saved and loaded on the host (as checkpoint.py does) brings
    the learning rate back as whatever was saved; lr_to_device makes it a device tensor again, which set_lr updates."""
    from tumorseg.training.cuda_graph import lr_to_device

    params = [torch.nn.Parameter(torch.ones(3))]
    opt = torch.optim.AdamW(params, lr=torch.tensor(0.1), foreach=False)
    params[0].grad = torch.ones(3)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    resumed = torch.optim.AdamW(params, lr=torch.tensor(0.5), foreach=False)
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt", map_location="cpu", weights_only=False))
    lr_to_device(resumed, torch.device("cpu"))
    lr = resumed.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(0.1)
    set_lr(resumed, 0.02)
    assert resumed.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.02)


def test_set_lr_writes_a_tensor_learning_rate_in_place():
    lr = torch.tensor(0.1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr, foreach=False)
    set_lr(opt, 0.05)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.05)
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    set_lr(plain, 0.05)
    assert plain.param_groups[0]["lr"] == 0.05


def test_cuda_graph_refuses_a_cpu_training_and_ddp():
    from tumorseg.training.loop import train_model

    with pytest.raises(ValueError, match="train.cuda_graph: false"):
        train_model("unet", TrainSettings(device="cpu", cuda_graph=True), ModelSettings(lr=1e-3, batch_size=2),
                    Path("no-store"), Path("no-split.parquet"), Path("out"), Path("ckpt"))
    with pytest.raises(SettingError, match="cuda_graph"):
        TrainSettings(cuda_graph=True, nproc_per_node=2)


def test_fast_upsample_path_runs_on_the_listed_devices_only(monkeypatch):
    """The phase-decomposed decoder conv saves arithmetic (a CPU's cost) but doubles a step's operations (an eager
    GPU's cost): it runs where FAST_UPSAMPLE_DEVICES says, and the plain path gives the same values elsewhere."""
    calls = []
    original = blocks.upsample2x_conv3x3
    monkeypatch.setattr(blocks, "upsample2x_conv3x3", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(0)
    block = DecoderBlock(6, 5, 7).double().eval()
    x, skip = torch.randn(1, 6, 8, 8, dtype=torch.float64), torch.randn(1, 5, 16, 16, dtype=torch.float64)
    fast = block(x, skip)
    assert calls == [1]
    monkeypatch.setattr(blocks, "FAST_UPSAMPLE_DEVICES", frozenset({"cuda"}))
    plain = block(x, skip)
    assert calls == [1]
    torch.testing.assert_close(fast, plain)
