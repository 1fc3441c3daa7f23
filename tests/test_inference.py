"""Test-time mirroring: the averaged probabilities are those of the four mirrored inputs."""

import numpy as np
import pytest
import torch

from tumorseg.evaluation.inference import MIRRORINGS, predict_slices, region_probabilities


class FixedLogits(torch.nn.Module):
    """Ignores the image and returns one fixed logit map: not mirror-equivariant, so TTA changes it."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(len(x), -1, -1, -1)


class Identity3(torch.nn.Module):
    """Logits are the first three input channels: mirror-equivariant, so TTA changes nothing."""

    def forward(self, x):
        return x[:, :3]


def test_mirroring_averages_the_four_flips():
    logits = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(1, 3, 4, 5) / 10 - 3
    model = FixedLogits(logits)
    x = torch.zeros(2, 4, 4, 5)
    p = torch.sigmoid(logits)
    expected = (p + p.flip(-1) + p.flip(-2) + p.flip(-2, -1)) / 4
    assert len(MIRRORINGS["all"]) == 4
    torch.testing.assert_close(region_probabilities(model, x, tta="all"), expected.expand(2, -1, -1, -1))
    torch.testing.assert_close(region_probabilities(model, x, tta="lr"), ((p + p.flip(-1)) / 2).expand(2, -1, -1, -1))
    torch.testing.assert_close(region_probabilities(model, x, tta="none"), p.expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="expected one of"):
        region_probabilities(model, x, tta="ud")


def test_mirroring_changes_nothing_for_an_equivariant_model():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 4, 8, 10)).astype(np.float32)
    plain = predict_slices(Identity3(), images, batch_size=4, tta="none")
    mirrored = predict_slices(Identity3(), images, batch_size=4, tta="all")
    np.testing.assert_array_equal(plain, mirrored)
    assert set(np.unique(plain)) > {0}  # the test would be vacuous on an all-background prediction


def test_mirroring_can_flip_a_boundary_voxel():
    # One voxel sure of tumour (logit 4) whose mirror images are weakly background (logit -1):
    # mean sigmoid = (0.982 + 3 * 0.269) / 4 = 0.447 < 0.5, so mirroring removes it.
    logits = torch.full((1, 3, 2, 2), -1.0)
    logits[0, :, 0, 0] = 4.0
    model = FixedLogits(logits)
    images = np.zeros((1, 4, 2, 2), dtype=np.float32)
    assert predict_slices(model, images, tta="none")[0, 0, 0] > 0
    assert predict_slices(model, images, tta="all")[0, 0, 0] == 0


def test_infer_keeps_no_patient_mapped_after_predicting_it(tiny_models_dir, tiny_pipeline, tmp_path, monkeypatch):
    """A memory map left open keeps every page it read resident: at full size the stage held ~2.5 GB of slices it no
    longer needed (bench/scale.py). Each patient's map must be gone once the next patient starts."""
    import gc
    import weakref

    import numpy as np

    from tumorseg.evaluation import infer as infer_module
    from tumorseg.models.runtime import RuntimeSettings

    maps, alive_at_next = [], []
    real_load = np.load

    def load(path, *args, **kwargs):
        gc.collect()
        alive_at_next.append(sum(m() is not None for m in maps))
        out = real_load(path, *args, **kwargs)
        if kwargs.get("mmap_mode"):
            maps.append(weakref.ref(out))
        return out

    monkeypatch.setattr(infer_module.np, "load", load)
    infer_module.infer_model("unet", tiny_models_dir / "unet", tiny_pipeline / "pre", tiny_pipeline / "split.parquet",
                             tmp_path / "inference", tmp_path / "seconds.json", RuntimeSettings(device="cpu"), tta="none")
    assert len(maps) >= 2 and max(alive_at_next) == 0
