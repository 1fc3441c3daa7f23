"""An exponential moving average of a model's weights, validated and saved in place of the last step's weights.

One training of these models moves a lot from seed to seed (bench/results/seeds*.md: lesion-wise WT Dice has a
standard deviation of 0.08-0.11 over seeds on the test patients), much of it in confidently predicted false-positive
tumours. The last step's weights are one noisy point of the optimiser's path; their running average over the last
hundred or so steps is a smoother model at no inference cost (Polyak averaging; timm's ModelEmaV3, used by most
strong segmentation and classification recipes). ``train.ema_decay`` turns it on.

The average starts from the initial weights with a short warm-up (decay ``min(decay, (1 + t) / (10 + t))`` after
``t`` updates, as timm and TensorFlow's ExponentialMovingAverage do), so it is not dominated by the random start in
a training of a few hundred steps. Floating-point buffers (BatchNorm's running statistics) are averaged too; integer
ones (BatchNorm's step counter) are copied.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """``module`` holds the averaged weights; ``update(model)`` after each optimiser step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay = {decay}; must be in (0, 1)")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        averaged, current = [], []
        mine_state, their_state = self.module.state_dict(), model.state_dict()
        if mine_state.keys() != their_state.keys():
            raise ValueError(f"the model's entries differ from the average's: {sorted(mine_state.keys() ^ their_state.keys())}")
        for name, mine in mine_state.items():
            theirs = their_state[name]
            if mine.shape != theirs.shape:
                raise ValueError(f"{name}: shape {tuple(theirs.shape)} differs from the average's {tuple(mine.shape)}")
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                mine.copy_(theirs)
        torch._foreach_lerp_(averaged, current, weight)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        if state["decay"] != self.decay:
            raise ValueError(f"the saved average used decay {state['decay']}, this training {self.decay}")
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
