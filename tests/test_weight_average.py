"""The moving average of the weights (tumorseg.training.weight_average), checked by hand."""

from __future__ import annotations

import pytest
import torch

from tumorseg.training.weight_average import WeightAverage


def test_the_average_follows_the_warm_up_decay_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(11.0)
    average.update(model)  # t = 1: decay min(0.99, 2 / 11): 0 + (1 - 2/11) * 11 = 9
    assert average.module.weight.item() == pytest.approx(9.0)
    with torch.no_grad():
        model.weight.fill_(21.0)
    average.update(model)  # t = 2: decay 3 / 12 = 0.25: 9 * 0.25 + 21 * 0.75 = 18
    assert average.module.weight.item() == pytest.approx(18.0)
    average.updates = 10_000
    assert average.current_decay() == 0.99  # late in training the configured decay, not the warm-up's
    assert model.weight.item() == 21.0  # the trained model is never touched


def test_batchnorm_statistics_are_averaged_and_its_step_counter_copied():
    model = torch.nn.BatchNorm2d(2)
    average = WeightAverage(model, decay=0.5)
    model.train()
    model(torch.full((4, 2, 3, 3), 10.0) + torch.randn(4, 2, 3, 3))
    average.update(model)  # decay min(0.5, 2/11) = 2/11
    expected = torch.zeros(2) * (2 / 11) + model.running_mean * (9 / 11)
    assert torch.allclose(average.module.running_mean, expected)
    assert int(average.module.num_batches_tracked) == int(model.num_batches_tracked) == 1
    assert not any(p.requires_grad for p in average.module.parameters())


def test_a_saved_average_restores_exactly_and_refuses_another_decay():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model)
    restored = WeightAverage(torch.nn.Linear(3, 2), decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 1 and torch.equal(restored.module.weight, average.module.weight)
    with pytest.raises(ValueError, match="decay 0.9"):
        WeightAverage(torch.nn.Linear(3, 2), decay=0.99).load_state_dict(average.state_dict())
    with pytest.raises(ValueError, match="must be in"):
        WeightAverage(model, decay=1.0)


def test_an_average_refuses_a_model_with_other_entries():
    average = WeightAverage(torch.nn.Sequential(torch.nn.Linear(2, 2)), decay=0.9)
    with pytest.raises(ValueError, match="entries differ"):
        average.update(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)))
