"""ONNX export: the graph reproduces PyTorch's logits, and `tumorseg predict --runtime onnx` uses it."""

from __future__ import annotations

import pytest
import torch

from tumorseg.data.labels import SEQUENCES
from tumorseg.models import build_model
from tumorseg.models.export import ONNX_FILE, TOLERANCE, OnnxModel, export_onnx
from tumorseg.models.io import save_model

pytest.importorskip("onnxruntime")
SMALL = {
    "unet": dict(base_channels=8, depth=3),
    "resnet_unet": dict(pretrained=False, decoder_channels=[32, 32, 16, 16, 8]),
    "transunet": dict(pretrained=False, hidden_dim=64, depth=1, num_heads=4, head_channels=64, decoder_channels=[32, 16, 16, 8]),
}
STATED = 1e-4  # the README's bound on |ONNX Runtime - PyTorch| logits at 240 x 240 (measured 1e-5 to 4e-5)


def _saved(name, folder, context=0):
    torch.manual_seed(0)
    model = build_model(name, in_channels=4 * (2 * context + 1), **SMALL[name]).eval()
    save_model(folder, model.state_dict(), {"model": name, "arch": SMALL[name], "in_channels": list(SEQUENCES),
                                            "context_slices": context})
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_onnx_reproduces_pytorch_at_240(name, tmp_path):
    model = _saved(name, tmp_path)
    result = export_onnx(tmp_path, size=(240, 240))
    assert max(result["max_abs_diff"].values()) <= STATED < TOLERANCE
    onnx_model = OnnxModel(tmp_path / ONNX_FILE)
    x = torch.randn(3, 4, 240, 240)  # another batch size than the export's example
    with torch.no_grad():
        expected = model(x)
    assert float((onnx_model(x) - expected).abs().max()) <= STATED
    assert onnx_model.config["model"] == name, "model.json travels inside the .onnx"
    if name == "transunet":
        assert result["fixed_size"] == [240, 240]
        with pytest.raises(ValueError, match="exported for 240 x 240 slices, got 192 x 192; export again with --size 192 192"):
            onnx_model(torch.randn(1, 4, 192, 192))
    else:
        assert result["fixed_size"] is None
        y = torch.randn(1, 4, 160, 208)
        with torch.no_grad():
            assert float((onnx_model(y) - model(y)).abs().max()) <= STATED


@pytest.mark.slow
def test_a_2_5d_model_exports_with_its_channels(tmp_path):
    model = _saved("unet", tmp_path, context=1)
    export_onnx(tmp_path, size=(96, 96))
    x = torch.randn(2, 12, 96, 96)
    with torch.no_grad():
        assert float((OnnxModel(tmp_path / ONNX_FILE)(x) - model(x)).abs().max()) <= STATED
