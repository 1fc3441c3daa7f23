"""Offline resolution of pretrained ImageNet encoder weights (shared by resnet_unet and transunet).

Training machines may have no internet, so `pretrained=True` never downloads. It looks, in order:
  1. the explicit `weights_file` constructor argument (params.yaml `models.<model>.arch.weights_file`),
  2. the environment variable TUMORSEG_<ENCODER>_WEIGHTS (e.g. TUMORSEG_RESNET34_WEIGHTS),
  3. the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) for
     timm's default checkpoint of the encoder (timm/resnet34.a1_in1k),
and otherwise raises PretrainedWeightsNotFound saying exactly how to provide the file. There is no
silent fallback to random weights: training from scratch needs an explicit `pretrained: false`.

Loading goes through timm (`pretrained_cfg_overlay=dict(file=...)`), so a 3-channel ImageNet stem is
adapted to `in_chans` channels exactly as timm does it (channels repeated [R,G,B,R,...] and scaled by
3 / in_chans), and a torchvision ResNet state_dict (same key names) works too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

log = logging.getLogger(__name__)

# Files looked up in a Hugging Face snapshot, best first (timm publishes model.safetensors).
HF_WEIGHT_FILENAMES = ("model.safetensors", "pytorch_model.bin")


class PretrainedWeightsNotFound(FileNotFoundError):
    """pretrained=True but no weights file could be found offline."""


def weights_env_var(encoder: str) -> str:
    """TUMORSEG_RESNET34_WEIGHTS for resnet34, TUMORSEG_RESNET50_WEIGHTS for resnet50, ..."""
    return f"TUMORSEG_{encoder.upper().replace('.', '_').replace('-', '_')}_WEIGHTS"


def hf_repo_id(encoder: str) -> str:
    """The Hugging Face repo timm loads the encoder's default weights from (timm/resnet34.a1_in1k)."""
    import timm  # here, not at the top: importing timm (and torchvision) takes seconds that unet never needs

    cfg = timm.models.get_pretrained_cfg(encoder)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return repo or f"timm/{encoder}"


def hf_hub_cache_dir() -> Path:
    """The hub cache directory, read from the environment at call time (HF_HUB_CACHE > HF_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def find_in_hf_cache(repo_id: str, cache_dir: Path | None = None) -> Path | None:
    """Path of the cached weights file of `repo_id` (revision main), or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = hf_hub_cache_dir() if cache_dir is None else cache_dir
    for filename in HF_WEIGHT_FILENAMES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir))
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _not_found_message(encoder: str, param_name: str, cache_dir: Path) -> str:
    repo = hf_repo_id(encoder)
    env = weights_env_var(encoder)
    return (
        f"pretrained=True but no {encoder} ImageNet weights were found (nothing is downloaded at run time). "
        f"Provide them in one of three ways:\n"
        f"  1. set the parameter {param_name} to the path of a .safetensors/.pth/.bin state_dict;\n"
        f"  2. set the environment variable {env}=/path/to/model.safetensors;\n"
        f"  3. put the Hugging Face checkpoint {repo} in the hub cache ({cache_dir}; set HF_HUB_CACHE or HF_HOME "
        f"to use another).\n"
        f"To fetch the file on a machine with internet: "
        f"python -c \"from huggingface_hub import hf_hub_download; print(hf_hub_download('{repo}', 'model.safetensors'))\" "
        f"and copy the printed file (or the whole cache folder models--{repo.replace('/', '--')}) here.\n"
        f"To train the encoder from scratch instead, set pretrained: false explicitly."
    )


def resolve_pretrained_weights(encoder: str, weights_file: str | os.PathLike | None, param_name: str) -> Path:
    """Find the weights file for `encoder` by the order in this module's docstring."""
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise PretrainedWeightsNotFound(
                f"{param_name} = {str(weights_file)!r}: no such file ({path.resolve()}). "
                f"Point it at a {encoder} state_dict (.safetensors/.pth/.bin) or leave it empty to use "
                f"${weights_env_var(encoder)} or the Hugging Face cache."
            )
        return path
    env = weights_env_var(encoder)
    if os.environ.get(env):
        path = Path(os.environ[env]).expanduser()
        if not path.is_file():
            raise PretrainedWeightsNotFound(
                f"environment variable {env} = {os.environ[env]!r}: no such file ({path.resolve()})."
            )
        return path
    cache_dir = hf_hub_cache_dir()
    cached = find_in_hf_cache(hf_repo_id(encoder), cache_dir)
    if cached is not None:
        return cached
    raise PretrainedWeightsNotFound(_not_found_message(encoder, param_name, cache_dir))


def create_encoder(
    encoder: str,
    in_channels: int,
    out_indices: tuple[int, ...],
    pretrained: bool,
    weights_file: str | os.PathLike | None,
    param_name: str,
) -> nn.Module:
    """timm feature extractor (features_only) with offline pretrained weights when asked."""
    import timm  # see hf_repo_id

    if not pretrained:
        log.info("%s encoder randomly initialised (pretrained=False)", encoder)
        return timm.create_model(encoder, features_only=True, in_chans=in_channels, out_indices=out_indices)
    path = resolve_pretrained_weights(encoder, weights_file, param_name)
    log.info("loading %s ImageNet weights from %s", encoder, path)
    try:
        return timm.create_model(
            encoder,
            features_only=True,
            in_chans=in_channels,
            out_indices=out_indices,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path)),
        )
    except (RuntimeError, KeyError, ValueError) as err:
        raise RuntimeError(
            f"could not load {path} as {encoder} weights (expected a timm/torchvision {encoder} state_dict "
            f"with its 3-channel conv1 and fc head): {err}"
        ) from err
