"""The three architectures: contract (shapes, raw logits), wiring (gradients, overfitting one batch,
attention mixing, skips), sizes, the registry and the offline pretrained-weights resolution."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from safetensors.torch import save_file

from tumorseg.models import (
    MODEL_NAMES,
    TRANSUNET_PAPER_PRESET,
    PretrainedWeightsNotFound,
    build_model,
    count_parameters,
    fast_autocast_dtype,
    model_params,
    weights_env_var,
)
from tumorseg.models.blocks import DecoderBlock
from tumorseg.models.runtime import cpu_has_fast_bf16

ENV_VAR = "TUMORSEG_RESNET34_WEIGHTS"

# Narrow variants for tests that are about wiring, not capacity (the encoders stay resnet34).
SMALL = {
    "unet": dict(base_channels=8),
    "resnet_unet": dict(decoder_channels=(32, 32, 16, 16, 8)),
    "transunet": dict(hidden_dim=64, depth=2, num_heads=4, head_channels=64, decoder_channels=(32, 16, 16, 8)),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These small tensors gain little from a second thread, while two OpenMP threads on a busy
    2-core machine stall each other (measured: one overfit test 3 s alone, 170 s under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    """No weights from the developer's machine leak into the tests: empty HF cache, no env var."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def small(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **{**SMALL[name], **extra})


# ---------------------------------------------------------------- registry


def test_registry_names():
    assert MODEL_NAMES == ("unet", "resnet_unet", "transunet")
    with pytest.raises(ValueError, match="unet, resnet_unet, transunet"):
        build_model("TransUNet")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registry_rejects_unknown_parameter(name):
    with pytest.raises(ValueError) as err:
        build_model(name, learning_rate=1e-3)
    assert repr(name) in str(err.value) and "learning_rate" in str(err.value)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_common_constructor_args(name):
    params = model_params(name)
    assert params["in_channels"] == 4 and params["num_classes"] == 3
    if name != "unet":
        assert params["pretrained"] is False and params["weights_file"] is None


def test_yaml_lists_accepted_for_channels():
    model = build_model("resnet_unet", decoder_channels=[32, 32, 16, 16, 8])
    assert model.head.in_channels == 8


def test_invalid_choices():
    with pytest.raises(ValueError, match="norm"):
        build_model("unet", norm="layer")
    with pytest.raises(ValueError, match="upsample"):
        build_model("unet", upsample="pixelshuffle")
    with pytest.raises(ValueError, match="decoder_channels"):
        build_model("resnet_unet", decoder_channels=(64, 32))
    with pytest.raises(ValueError, match="divisible"):
        build_model("transunet", hidden_dim=100, num_heads=3)


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [(32, 32), (64, 48), (97, 131), (240, 240)])
def test_output_shape_and_raw_logits(name, size):
    model = small(name).eval()
    x = torch.randn(1, 4, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, *size)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    # Raw logits: no sigmoid/softmax inside forward() (those would never be negative).
    assert (y < 0).any()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_prior_sets_the_starting_tumour_probability(name):
    """A fresh model predicts ~1% tumour (the prior), not 50%: the reason a short training converges."""
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        p_default = torch.sigmoid(small(name).eval()(x))
        p_custom = torch.sigmoid(small(name, output_prior=0.2).eval()(x))
        p_off = torch.sigmoid(small(name, output_prior=None).eval()(x))
    assert abs(float(p_default.mean()) - 0.01) < 0.005
    assert abs(float(p_custom.mean()) - 0.2) < 0.05
    assert float(p_off.mean()) > 0.1  # PyTorch's own init: around one half
    with pytest.raises(ValueError, match="output_prior"):
        small(name, output_prior=1.5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_model_at_240(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 4, 240, 240))
    assert y.shape == (1, 3, 240, 240)


@pytest.mark.parametrize(
    "params",
    [
        dict(norm="group", upsample="bilinear"),
        dict(norm="instance", upsample="nearest", dropout=0.2),
        dict(depth=3, upsample="transpose"),
        dict(depth=5),
    ],
)
def test_unet_variants(params):
    model = build_model("unet", base_channels=4, **params).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 75, 66)).shape == (1, 3, 75, 66)


@pytest.mark.parametrize("name", ["resnet_unet", "transunet"])
@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_encoder_models_upsample_options(name, upsample):
    model = small(name, upsample=upsample).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 70, 90)).shape == (1, 3, 70, 90)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("skip_channels", [0, 5])
def test_fast_nearest_upsample_path_is_exact(channels_last, skip_channels):
    """The phase-decomposed conv equals nearest-upsample + cat + conv, values and gradients."""
    torch.manual_seed(0)
    fast = DecoderBlock(6, skip_channels, 7).double()
    slow = DecoderBlock(6, skip_channels, 7).double()
    slow.load_state_dict(fast.state_dict())
    slow.fast_upsample = False
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=fmt)
    skip = torch.randn(2, skip_channels, 18, 22, dtype=torch.float64).contiguous(memory_format=fmt)
    skip = skip if skip_channels else None
    outs, grads = [], []
    for block in (fast, slow):
        xg = x.clone().requires_grad_()
        y = block(xg, skip, size=(18, 22))
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append(y)
        grads.append((xg.grad, block.conv1[0].weight.grad))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


# ---------------------------------------------------------------- wiring


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_every_parameter(name):
    model = small(name).train()
    x = torch.randn(2, 4, 64, 64)
    target = (torch.rand(2, 3, 64, 64) > 0.8).float()
    # timm zero-initialises the last BN of each residual block (its branch starts as identity), which
    # blocks the first gradient of the branch convs; one optimiser step lifts that, as in training.
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(x), target).backward()
        opt.step()
    for pname, p in model.named_parameters():
        assert p.requires_grad, pname
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: all-zero gradient for {pname}"


def blob_batch(n: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Nested discs (WT > TC > ET) in noisy 4-channel images whose intensities depend on the region."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, targets = [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * size * 0.5 + size * 0.25).tolist()
        dist = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        wt, tc, et = ((dist < size * f).float() for f in (0.22, 0.13, 0.06))
        target = torch.stack([wt, tc, et])
        image = 0.3 * torch.randn(4, size, size, generator=g)
        image += torch.stack([wt + et, wt * 0.5, tc, wt - tc * 0.5])
        images.append(image)
        targets.append(target)
    return torch.stack(images), torch.stack(targets)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((0, 2, 3))
    dice = (2 * inter + 1) / (prob.sum((0, 2, 3)) + target.sum((0, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - dice).mean()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_overfits_one_batch(name):
    """BCE + soft Dice on one fixed batch falls below 0.3x its initial value within 50 Adam steps."""
    model = small(name, **({"base_channels": 16} if name == "unet" else {})).train()
    x, target = blob_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        opt.zero_grad(set_to_none=True)
        loss = bce_dice_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.3 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def _corner_perturbation_effect(model: torch.nn.Module, where: str) -> tuple[float, float]:
    """Relative max change at the centre when the top-left corner changes, (1) of the transformer's
    output tokens and (2) of the model's output; `where` perturbs the "input" (noise in the 32 x 32
    corner) or the "token" at grid (0, 0) (through a hook on the patch embedding). 256 x 256 input,
    so 16 x 16 tokens; the centre is 8 tokens / 128 pixels away from the corner."""
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(1, 4, 256, 256)
    noise = torch.Generator().manual_seed(2)
    tokens: list[torch.Tensor] = []
    keep = model.norm.register_forward_hook(lambda _m, _i, out: tokens.append(out))

    def bump_corner_token(_module, _inputs, out):
        out = out.clone()
        out[..., 0, 0] += 5.0 * torch.randn(out.shape[:2], generator=noise)
        return out

    with torch.no_grad():
        base = model(x)
        if where == "token":
            bump = model.patch_embed.register_forward_hook(bump_corner_token)
            moved = model(x)
            bump.remove()
        else:
            x2 = x.clone()
            x2[..., :32, :32] = 5.0 * torch.randn(1, 4, 32, 32, generator=noise)
            moved = model(x2)
    keep.remove()
    centre_token = 8 * 16 + 8
    token_change = (tokens[1] - tokens[0])[:, centre_token].abs().max() / tokens[0].abs().max()
    out_change = (moved - base)[..., 124:132, 124:132].abs().max() / base.abs().max()
    return token_change.item(), out_change.item()


@pytest.mark.parametrize("where", ["token", "input"])
def test_transunet_attention_mixes_distant_tokens(where):
    """Self-attention carries a change in the corner to the centre token and on to the centre of the
    output. Control: without transformer blocks the (at init short-range) convolutions cannot carry
    it 128 px, so the centre is bit-for-bit unchanged."""
    token_change, out_change = _corner_perturbation_effect(small("transunet"), where)
    assert token_change > 1e-4 and out_change > 0.0
    token_change, out_change = _corner_perturbation_effect(small("transunet", depth=0), where)
    assert token_change == 0.0 and out_change == 0.0


@pytest.mark.parametrize(
    "name, expected",
    [
        # (skip channels, skip size) per decoder block for a 96 x 96 input; None = no skip.
        ("transunet", [(128, 12), (64, 24), (64, 48), None]),
        ("resnet_unet", [(256, 6), (128, 12), (64, 24), (64, 48), None]),
    ],
)
def test_decoder_receives_skips(name, expected):
    model = small(name).eval()
    seen = []
    hooks = [
        block.register_forward_hook(lambda _m, args, _out: seen.append(args[1] if len(args) > 1 else None))
        for block in model.decoder
    ]
    with torch.no_grad():
        model(torch.randn(1, 4, 96, 96))
    for h in hooks:
        h.remove()
    got = [None if s is None else (s.shape[1], s.shape[-1]) for s in seen]
    assert got == expected


def test_transunet_position_embeddings_resized():
    model = build_model("transunet", hidden_dim=64, num_heads=4, depth=1)
    assert model.grid_size == (15, 15) and model.pos_embed.shape == (1, 225, 64)
    assert model.position_embedding((15, 15)) is model.pos_embed
    assert model.position_embedding((7, 9)).shape == (1, 63, 64)
    # the same numbers as timm's interpolation, as a matrix whose backward is deterministic
    with torch.no_grad():
        expected = resample_abs_pos_embed(model.pos_embed, new_size=[7, 9], old_size=[15, 15], num_prefix_tokens=0)
        assert torch.allclose(model.position_embedding((7, 9)), expected, atol=1e-5)


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "name, params, low, high",
    [
        ("unet", {}, 5e6, 10e6),
        ("resnet_unet", {}, 23e6, 26e6),
        ("transunet", {}, 15e6, 25e6),
        ("transunet", TRANSUNET_PAPER_PRESET, 90e6, 115e6),
    ],
    ids=["unet", "resnet_unet", "transunet", "transunet-paper"],
)
def test_parameter_counts(name, params, low, high, record_property):
    count = count_parameters(build_model(name, **params))
    record_property(f"params_{name}{'_paper' if params else ''}", count)
    print(f"{name}{' (paper preset)' if params else ''}: {count / 1e6:.2f} M parameters")
    assert low <= count <= high


# ---------------------------------------------------------------- pretrained weights (offline)


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A timm resnet34 state_dict (3-channel stem, 1000-class head) saved as .safetensors and .pth."""
    torch.manual_seed(123)
    state = timm.create_model("resnet34").state_dict()
    folder = tmp_path_factory.mktemp("weights")
    save_file(state, str(folder / "model.safetensors"))
    torch.save(state, folder / "resnet34.pth")
    return state, folder


def assert_encoder_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    enc = model.encoder.state_dict()
    w3 = state["conv1.weight"]
    # timm's adaptation of a 3-channel stem to 4 channels: [R, G, B, R] scaled by 3/4.
    torch.testing.assert_close(enc["conv1.weight"], torch.cat([w3, w3[:, :1]], dim=1) * 0.75)
    torch.testing.assert_close(enc["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    torch.testing.assert_close(enc["layer3.2.bn2.running_var"], state["layer3.2.bn2.running_var"])


@pytest.mark.parametrize("name", ["resnet_unet", "transunet"])
def test_pretrained_from_weights_file(name, imagenet_like):
    state, folder = imagenet_like
    model = build_model(name, **SMALL[name], pretrained=True, weights_file=str(folder / "model.safetensors"))
    assert_encoder_loaded(model, state)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 4, 64, 64)).shape == (1, 3, 64, 64)


def test_pretrained_from_env_var_pth(imagenet_like, monkeypatch):
    state, folder = imagenet_like
    monkeypatch.setenv(ENV_VAR, str(folder / "resnet34.pth"))
    assert weights_env_var("resnet34") == ENV_VAR
    assert_encoder_loaded(build_model("resnet_unet", **SMALL["resnet_unet"], pretrained=True), state)


def test_pretrained_from_hf_cache(imagenet_like, monkeypatch, tmp_path):
    state, folder = imagenet_like
    repo = tmp_path / "hub" / "models--timm--resnet34.a1_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert_encoder_loaded(build_model("transunet", **SMALL["transunet"], pretrained=True), state)


def test_explicit_weights_file_missing_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "resnet34.safetensors"
    with pytest.raises(PretrainedWeightsNotFound, match="nope/resnet34.safetensors") as err:
        build_model("resnet_unet", pretrained=True, weights_file=str(missing))
    assert "models.resnet_unet.arch.weights_file" in str(err.value)


@pytest.mark.parametrize("name", ["resnet_unet", "transunet"])
def test_no_weights_anywhere_says_how_to_provide_them(name):
    with pytest.raises(PretrainedWeightsNotFound) as err:
        build_model(name, pretrained=True)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert f"models.{name}.arch.weights_file" in message
    assert ENV_VAR in message
    assert "timm/resnet34.a1_in1k" in message and "hf_hub_download" in message
    assert "pretrained: false" in message


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, str(bad))
    with pytest.raises(RuntimeError, match="could not load"):
        build_model("resnet_unet", pretrained=True, weights_file=str(bad))


# ---------------------------------------------------------------- runtime helper


def test_fast_autocast_dtype_follows_cpu_flags():
    assert fast_autocast_dtype("cpu") == (torch.bfloat16 if cpu_has_fast_bf16() else None)
    assert fast_autocast_dtype("mps") is None


def test_auto_precision_is_fp32_on_every_cpu(monkeypatch):
    """The same params give the same metrics on any CPU: bf16 on a CPU only when asked for."""
    import tumorseg.models.runtime as runtime

    cpu = torch.device("cpu")
    for native_bf16 in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda native=native_bf16: native)
        assert runtime.pick_amp_dtype("auto", cpu) is None
        assert runtime.pick_amp_dtype("bf16", cpu) is torch.bfloat16
        assert runtime.pick_amp_dtype("off", cpu) is None


def test_building_unet_leaves_timm_unimported():
    """timm (and the torchvision it imports) costs seconds per process: the unet stages, `tumorseg predict` with unet
    and the report must not pay for it; the ResNet encoders import it when built."""
    import subprocess
    import sys

    code = ("import sys; from tumorseg.models import build_model; build_model('unet', in_channels=4); "
            "import tumorseg.training.loop, tumorseg.evaluation.infer, tumorseg.evaluation.report; "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules)); "
            "build_model('resnet_unet', in_channels=4); print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "True"]
