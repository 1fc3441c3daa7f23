"""GPU check and benchmark: the CUDA path of training and inference, at the real data's size.

Run on a machine with a CUDA GPU (it refuses to run without one):

    python bench/gpu.py --store data/preprocessed --split data/split.parquet --out bench/results/gpu.md

1. Throughput at BraTS-Africa's 240 x 240: training slices/s per model with bf16 autocast and in
   fp32 (channels_last, the params.yaml batch sizes of the real-data profile: 16 / 16 / 8), and the
   seconds to predict one 240 x 240 x 155 volume (155 slices, batch 32, bf16).
2. The pipeline's own `train_model` on CUDA with `train.device: auto` and `train.amp: auto` (which
   must pick cuda and bf16), run twice with `deterministic: true`: the loss must stay finite and
   both runs must give byte-identical weights.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tumorseg.models import MODEL_NAMES, build_model, count_parameters  # noqa: E402
from tumorseg.training.losses import segmentation_loss  # noqa: E402

from _output import emit  # noqa: E402  (bench/ is on sys.path when a script runs)

BATCH = {"unet": 16, "resnet_unet": 16, "transunet": 8}
ARCH = {"unet": {"base_channels": 32}, "resnet_unet": {}, "transunet": {}}  # the real-data profile's sizes


def _sync():
    torch.cuda.synchronize()


def train_throughput(name: str, amp: bool, size: int = 240, steps: int = 20) -> float:
    torch.manual_seed(0)
    model = build_model(name, **ARCH[name]).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    bs = BATCH[name]
    x = torch.randn(bs, 4, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = (torch.rand(bs, 3, size, size, device="cuda") > 0.95).float()
    for i in range(steps + 5):
        if i == 5:
            _sync()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = segmentation_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync()
    return steps * bs / (time.perf_counter() - t0)


@torch.no_grad()
def volume_seconds(name: str, size: int = 240, depth: int = 155, batch: int = 32) -> float:
    model = build_model(name, **ARCH[name]).cuda().eval().to(memory_format=torch.channels_last)
    volume = torch.randn(depth, 4, size, size)  # on the host, as a loaded NIfTI volume is
    times = []
    for _ in range(4):
        _sync()
        t0 = time.perf_counter()
        for start in range(0, depth, batch):
            x = volume[start:start + batch].cuda(non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                (model(x).float() > 0).cpu()
        _sync()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def pipeline_training(store: Path, split: Path) -> list[str]:
    from tumorseg.training.loop import train_model
    from tumorseg.training.settings import ModelSettings, TrainSettings

    train = TrainSettings(epochs=3, samples_per_epoch=512, patience=0, device="auto", amp="auto", deterministic=True, patch_size=64)
    lines = []
    for name in MODEL_NAMES:
        model = ModelSettings(lr=1e-3, batch_size=BATCH[name], arch={})
        shas = []
        for attempt in range(2):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                config = train_model(name, train, model, store, split, Path(tmp) / "out", Path(tmp) / "ckpt")
                seconds = time.perf_counter() - t0
                shas.append(hashlib.sha256((Path(tmp) / "out" / "model.safetensors").read_bytes()).hexdigest())
        lines.append(f"| {name} | {config['best_val_dice_mean']:.3f} | {seconds:.1f} | "
                     f"{'identical' if shas[0] == shas[1] else 'DIFFERENT'} ({shas[0][:12]}) |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; none is visible")
    from tumorseg.models.runtime import pick_amp_dtype, pick_device

    device = pick_device("auto")
    lines = [f"`python bench/gpu.py` on {torch.cuda.get_device_name()}, torch {torch.__version__}, {platform.python_version()}",
             "", f"- `train.device: auto` -> {device}; `train.amp: auto` -> {pick_amp_dtype('auto', device)}", "",
             "| model | parameters | train bf16 (slices/s) | train fp32 (slices/s) | bf16 speed-up | predict 240x240x155 bf16 (s) |",
             "|---|---|---|---|---|---|"]
    for name in MODEL_NAMES:
        bf16, fp32 = train_throughput(name, True), train_throughput(name, False)
        params = count_parameters(build_model(name, **ARCH[name]))
        lines.append(f"| {name} | {params / 1e6:.1f} M | {bf16:.0f} | {fp32:.0f} | {bf16 / fp32:.2f}x | {volume_seconds(name):.2f} |")
        print(lines[-1], flush=True)
    lines += ["", "Pipeline training on CUDA (3 epochs x 512 samples, 64 x 64 patches, deterministic), run twice:", "",
              "| model | best val mean Dice | seconds | weights of the two runs |", "|---|---|---|---|"]
    lines += pipeline_training(args.store, args.split)
    text = "\n".join(lines)
    emit(text, args.out)


if __name__ == "__main__":
    main()
