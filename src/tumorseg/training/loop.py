"""The training loop: seeded, resumable, validated every epoch, tracked in MLflow.

Randomness is derived from (seed, epoch) at the start of every epoch rather than carried in a
running generator, so a training resumed from its last checkpoint draws the same samples and
augmentations as an uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

import copy
import csv
import json
import io
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tumorseg.data.context import centre_slice, input_channels
from tumorseg.data.labels import REGION_NAMES, SEQUENCES, labels_to_regions
from tumorseg.data.slices import read_slice_index
from tumorseg.data.split import read_split
from tumorseg.fileio import atomic_file, sha256_file
from tumorseg.models import build_model, count_parameters
from tumorseg.models.io import CONFIG_FILE, WEIGHTS_FILE, save_model
from tumorseg.models.runtime import autocast, configure_determinism, pick_amp_dtype, pick_device, pin_cpu_kernels
from tumorseg.tracking import TAG_DATA, TAG_WEIGHTS, MlflowSettings, TrainingRun
from tumorseg.training import checkpoint, distributed
from tumorseg.training.cuda_graph import GraphedTrainStep, capturable_adamw, lr_to_device, set_lr
from tumorseg.training.augment import build_augmentation
from tumorseg.training.data import SliceBank, StreamBank, epoch_indices, mimic_voxels, open_bank, random_patches, to_device
from tumorseg.training.losses import mimic_weights, segmentation_loss
from tumorseg.training.step import optimisation_step
from tumorseg.training.weight_average import WeightAverage
from tumorseg.training.settings import ModelSettings, TrainSettings

log = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
LOG_EVERY = 10  # steps between reads of the loss on the host (progress bar, non-finite check)
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_dice_WT", "val_dice_TC", "val_dice_ET", "val_dice_mean")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of saving garbage."""


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, schedule: str) -> float:
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def split_slices(store_dir: Path, split_path: Path) -> dict[str, pd.DataFrame]:
    index = read_slice_index(Path(store_dir) / "slice_index.parquet")
    split = read_split(split_path)
    merged = index.merge(split[["case_id", "slice", "split"]], on=["case_id", "slice"], how="inner", validate="one_to_one")
    if len(merged) != len(index):
        raise ValueError(f"{split_path} does not match {store_dir}: rerun `dvc repro split`")
    return {name: merged[merged["split"] == name] for name in ("train", "val", "test")}


@torch.no_grad()
def validate(model, bank: SliceBank | StreamBank, batch_size: int, device, amp_dtype, channels_last: bool, bce_weight=1.0, dice_weight=1.0) -> dict[str, float]:
    """Loss and Dice per region over the whole validation set (voxels pooled over slices)."""
    model.eval()
    inter = torch.zeros(3, dtype=torch.float64)
    total = torch.zeros(3, dtype=torch.float64)
    loss_sum, n = 0.0, 0
    for start in range(0, len(bank), batch_size):
        x, labels = bank.batch(torch.arange(start, min(start + batch_size, len(bank)), device=bank.rows_device))
        x, y = x.to(device), labels_to_regions(labels.to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(x)
        loss_sum += float(segmentation_loss(logits, y, bce_weight, dice_weight)) * len(x)
        n += len(x)
        pred = logits.float() > 0
        inter += (pred & (y > 0)).sum((0, 2, 3)).double().cpu()
        total += (pred.sum((0, 2, 3)) + y.sum((0, 2, 3))).double().cpu()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones(3, dtype=torch.float64))
    out = {"val_loss": loss_sum / max(n, 1)}
    out.update({f"val_dice_{r}": float(d) for r, d in zip(REGION_NAMES, dice)})
    out["val_dice_mean"] = float(dice.mean())
    return out


def _history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in history:
        writer.writerow({k: (f"{rec[k]:.6g}" if isinstance(rec[k], float) else rec[k]) for k in HISTORY_COLUMNS})
    return buf.getvalue()


def loss_figure(history: list[dict], model_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax1.set(xlabel="epoch", ylabel="BCE + soft Dice loss", title=f"{model_name}: loss")
    ax1.legend()
    for region in REGION_NAMES:
        ax2.plot(epochs, [h[f"val_dice_{region}"] for h in history], marker="o", label=region)
    ax2.set(xlabel="epoch", ylabel="validation Dice", title=f"{model_name}: validation Dice", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    return fig


def train_model(
    name: str,
    train: TrainSettings,
    model_cfg: ModelSettings,
    store_dir: Path,
    split_path: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    mlflow_settings: MlflowSettings | None = None,
    preprocess_config: dict | None = None,
    manifest_path: Path | None = None,
    on_epoch=None,
) -> dict:
    """Train ``name`` and write ``out_dir/{model.safetensors, model.json, history.csv}``.

    ``on_epoch(record)``, if given, receives each epoch's history record plus its timings (``train_seconds``,
    ``val_seconds``, ``slices``): what bench/gpu.py measures throughput with, through the loop itself.

    Under torchrun (``train.nproc_per_node``; tumorseg.training.distributed) every rank runs this function on its share
    of each batch; rank 0 alone validates and writes."""
    requested = pick_device(train.device)  # asks for a GPU, runs no CPU kernel
    # the thread count only where the numbers are the CPU's: a GPU run keeps torch's host threads
    log.info("%s", pin_cpu_kernels(train.cpu_kernels, train.num_threads if requested.type == "cpu" else 0))
    if train.compile and requested.type == "cpu" and train.cpu_kernels != "native":
        log.warning("train.compile on a CPU: inductor generates code for this CPU's own instructions, which "
                    "train.cpu_kernels: %s does not pin; these weights may differ from another CPU's", train.cpu_kernels)
    world = distributed.world_from_env()
    device = distributed.start(world, requested)
    try:
        return _train(name, train, model_cfg, store_dir, split_path, out_dir, checkpoint_dir, mlflow_settings,
                      preprocess_config, manifest_path, on_epoch, world, device)
    finally:
        distributed.stop(world)


def _train(name, train, model_cfg, store_dir, split_path, out_dir, checkpoint_dir, mlflow_settings, preprocess_config,
           manifest_path, on_epoch, world: distributed.World, device: torch.device) -> dict:
    if not world.is_main:
        logging.getLogger("tumorseg").setLevel(logging.WARNING)  # one rank tells the story
    amp_dtype = pick_amp_dtype(train.amp, device)
    if train.cuda_graph and device.type != "cuda":
        raise ValueError(f"train.cuda_graph: true replays CUDA graphs, but {name} trains on {device.type}: set "
                         "train.cuda_graph: false (or train.device: cuda on a machine with a CUDA GPU)")
    configure_determinism(train.deterministic, device)
    torch.manual_seed(train.seed)
    epochs = model_cfg.epochs or train.epochs

    subsets = split_slices(store_dir, split_path)
    train_rows = subsets["train"]
    if train.tumour_slices_only:
        train_rows = train_rows[train_rows["has_tumour"]]
    val_rows = subsets["val"].sort_values(["case_id", "slice"])
    if train.max_val_slices and len(val_rows) > train.max_val_slices:
        val_rows = val_rows.iloc[np.linspace(0, len(val_rows) - 1, train.max_val_slices).round().astype(int)]
    if train_rows.empty or val_rows.empty:
        raise ValueError(f"{split_path}: the train or val subset is empty; check split.fractions")
    train_bank = open_bank(store_dir, train_rows, train.context_slices, train.bank, device, mimics=train.uses_mimics)
    if train.uses_mimics:
        log.info("%s: %d of %d training slices hold tumour mimics (FLAIR >= %.3f or T1c >= %.3f outside the tumour)", name,
                 int(train_bank.has_mimic.sum()), len(train_bank), *train_bank.mimic_thresholds)
    val_bank = open_bank(store_dir, val_rows, train.context_slices, train.bank, device) if world.is_main else None
    share = distributed.local_share(model_cfg.batch_size, world) if world.enabled else slice(None)

    model = build_model(name, in_channels=input_channels(train.context_slices), **model_cfg.arch).to(device)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Fused AdamW (one kernel for every parameter) on CUDA only: the CPU keeps the reference implementation, so CPU
    # runs reproduce the committed metrics. A captured step needs it capturable, its learning rate a device tensor.
    if train.cuda_graph:
        optimizer = capturable_adamw(model.parameters(), model_cfg.lr, train.weight_decay, device)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=model_cfg.lr, weight_decay=train.weight_decay,
                                      fused=True if device.type == "cuda" else None)
    # The compiled module shares the parameters of `model`; validation and saving use `model` itself, so whole-slice
    # validation batches never trigger a recompile of the patch-sized training graph.
    augmentation = build_augmentation(train.augment)
    n_samples = train.samples_per_epoch or len(train_bank)
    steps_per_epoch = max(1, n_samples // model_cfg.batch_size)
    total_steps = steps_per_epoch * epochs

    split_sha = sha256_file(split_path)
    fp = checkpoint.fingerprint(name, asdict(train), asdict(model_cfg), preprocess_config or {}, split_sha,
                                checkpoint.folder_digest(store_dir), checkpoint.code_digest(), torch.__version__)
    state = checkpoint.load_resume_state(checkpoint_dir, fp)
    history: list[dict] = []
    best = {"score": -1.0, "epoch": -1, "state": None}
    bad_epochs, start_epoch = 0, 0
    # validated, chosen and saved in place of the last step's weights when train.ema_decay > 0 (training/weight_average)
    average = WeightAverage(model, train.ema_decay) if train.ema_decay > 0 else None
    evaluated = average.module if average is not None else model
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if average is not None:
            average.load_state_dict(state["average"])
        if train.cuda_graph:
            lr_to_device(optimizer, device)
        history, best, bad_epochs, start_epoch = state["history"], state["best"], state["bad_epochs"], state["epoch"] + 1
        log.info("resuming %s from %s after epoch %d", name, Path(checkpoint_dir) / checkpoint.RESUME_FILE, state["epoch"])
    train_module = model
    if world.enabled:  # gradients averaged over the ranks at every step: the global batch is the configured one
        from torch.nn.parallel import DistributedDataParallel

        train_module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # The compiled module shares the parameters of `model`; validation and saving use `model` itself, so whole-slice
    # validation batches never trigger a recompile of the patch-sized training graph.
    step_model = torch.compile(train_module) if train.compile else train_module
    def loss_fn(logits, y, w):
        return segmentation_loss(logits, y, train.bce_weight, train.dice_weight, w)

    graphed = None
    if train.cuda_graph:  # autocast without its weight-cast cache: a cache filled outside a graph is read inside it
        graphed = GraphedTrainStep(step_model, optimizer, loss_fn, lambda: autocast(device, amp_dtype, cache_enabled=False))

    def step_autocast():
        return autocast(device, amp_dtype)

    params = {"model": name, "train": asdict(train), "models": {name: asdict(model_cfg)}, "device": str(device),
              "amp": str(amp_dtype), "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "parameters": count_parameters(model),
              "train_slices": len(train_bank), "val_slices": len(val_rows), "processes": world.size}
    tags = {TAG_DATA: sha256_file(manifest_path) if manifest_path and Path(manifest_path).is_file() else "unknown"}
    run = TrainingRun(mlflow_settings if mlflow_settings and world.is_main else MlflowSettings(enabled=False), name, params, tags, manifest_path,
                      resume_run_id=state.get("mlflow_run_id") if state is not None else None)
    if state is not None and not run.resumed:
        for rec in history:  # a new run for a resumed training re-logs the epochs it inherited, so its curves are whole
            run.log_metrics({k: v for k, v in rec.items() if k != "epoch"}, step=rec["epoch"])
    log.info("training %s: %d params, device %s, autocast %s, %d train / %d val slices, %d epochs x %d steps of %d",
             name, count_parameters(model), device, amp_dtype, len(train_bank), len(val_rows), epochs, steps_per_epoch, model_cfg.batch_size)
    if world.enabled:
        log.info("%s: %d processes, each %d samples of every batch of %d", name, world.size, share.stop - share.start, model_cfg.batch_size)
    try:
        for epoch in range(start_epoch, epochs):
            generator = torch.Generator().manual_seed(train.seed * 100_003 + epoch)
            torch.manual_seed(train.seed + epoch)  # dropout and any other global randomness
            indices, kinds = epoch_indices(train_bank, steps_per_epoch * model_cfg.batch_size, train.foreground_fraction, generator,
                                           train.mimic_fraction)
            indices = to_device(indices, train_bank.rows_device)  # once per epoch, not once per step
            if world.enabled:  # the same sample list on every rank (above), but each rank its own augmentations
                generator = torch.Generator().manual_seed((train.seed * 100_003 + epoch) * 1_000 + world.rank + 1)
            model.train()
            t0, seen = time.perf_counter(), 0
            # Kept on the device and read every LOG_EVERY steps: a read (float(), isfinite in an if) makes a GPU wait.
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the first step with a non-finite loss
            bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{epochs}", unit="step", dynamic_ncols=True, leave=False,
                       disable=None if world.is_main else True)
            for step in bar:
                lr = lr_at(epoch * steps_per_epoch + step, total_steps, train.warmup_epochs * steps_per_epoch, model_cfg.lr, train.lr_schedule)
                set_lr(optimizer, lr)
                batch_rows = slice(step * model_cfg.batch_size, (step + 1) * model_cfg.batch_size)
                b = indices[batch_rows][share]
                x, labels = train_bank.batch(b)
                y = labels_to_regions(labels)
                x, y = augmentation(x, y, generator)
                x, y = random_patches(x, y, train.patch_size, kinds[batch_rows][share], generator,
                                      train_bank.mimic_thresholds if train.mimic_fraction > 0 else None)
                if train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                weights = None
                if train.mimic_loss_weight != 1:
                    mimic = mimic_voxels(centre_slice(x), y[:, 0] > 0, train_bank.mimic_thresholds)
                    weights = mimic_weights(mimic, train.mimic_loss_weight)
                if graphed is not None:
                    loss = graphed(x, y, weights)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss = optimisation_step(step_model, optimizer, loss_fn, step_autocast, x, y, weights)
                if average is not None:
                    average.update(model)
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
                seen += len(b)
                loss_sum += loss.detach().double() * len(b)
                if step % LOG_EVERY == 0 or step == steps_per_epoch - 1:
                    if int(first_bad) >= 0:
                        raise NonFiniteLossError(f"{name}: loss is not finite at epoch {epoch + 1}, step {int(first_bad) + 1}; "
                                                 f"lower models.{name}.lr or check the input data")
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}", slices_per_s=f"{seen / (time.perf_counter() - t0):.1f}")
            bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize()  # the epoch's work, not only its launches, inside train_seconds
            train_seconds = time.perf_counter() - t0
            if world.enabled:
                totals = distributed.all_sum(torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=device)]), world)
                loss_sum, seen = totals[0], int(totals[1])
            val = None
            if world.is_main:
                val = validate(evaluated, val_bank, train.eval_batch_size, device, amp_dtype, train.channels_last, train.bce_weight,
                               train.dice_weight)
            val = distributed.broadcast(val, world)  # every rank decides the same early stop
            record = {"epoch": epoch + 1, "lr": lr, "train_loss": float(loss_sum) / max(seen, 1), **val}
            history.append(record)
            if on_epoch is not None and world.is_main:
                on_epoch(record | {"train_seconds": train_seconds, "val_seconds": time.perf_counter() - t0 - train_seconds,
                                   "slices": seen})
            run.log_metrics({k: v for k, v in record.items() if k != "epoch"} | {"slices_per_s": seen / train_seconds,
                            "epoch_seconds": time.perf_counter() - t0}, step=epoch + 1)
            improved = val["val_dice_mean"] > best["score"]
            if improved:
                best = {"score": val["val_dice_mean"], "epoch": epoch + 1,
                        "state": {k: v.detach().cpu().clone() for k, v in evaluated.state_dict().items()} if world.is_main else None}
                bad_epochs = 0
            else:
                bad_epochs += 1
            log.info("%s epoch %d/%d: train loss %.4f, val loss %.4f, val Dice WT %.3f TC %.3f ET %.3f (mean %.3f)%s, %.1f slices/s",
                     name, epoch + 1, epochs, record["train_loss"], val["val_loss"], val["val_dice_WT"], val["val_dice_TC"],
                     val["val_dice_ET"], val["val_dice_mean"], " *best*" if improved else "", seen / train_seconds)
            if world.is_main:
                checkpoint.save_resume_state(checkpoint_dir, {
                    "fingerprint": fp, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "history": history, "best": best, "bad_epochs": bad_epochs, "mlflow_run_id": run.run_id,
                    "average": average.state_dict() if average is not None else None,
                })
            if train.patience and bad_epochs >= train.patience:
                log.info("%s: early stop after epoch %d (no validation improvement for %d epochs)", name, epoch + 1, bad_epochs)
                break
    except BaseException:
        run.end(status="KILLED")
        raise
    finally:
        if graphed is not None:
            graphed.release()

    config = {"model": name, "arch": dict(model_cfg.arch), "in_channels": list(SEQUENCES), "context_slices": train.context_slices,
              "regions": list(REGION_NAMES), "preprocess": preprocess_config or {}, "best_epoch": best["epoch"],
              "best_val_dice_mean": round(best["score"], 6), "epochs_run": len(history)}
    if not world.is_main:
        return config
    save_model(out_dir, best["state"], config)
    with atomic_file(Path(out_dir) / HISTORY_FILE) as tmp:
        tmp.write_text(_history_csv(history))
    weights_sha = sha256_file(Path(out_dir) / WEIGHTS_FILE)
    run.set_tags({TAG_WEIGHTS: weights_sha})
    for name_ in (CONFIG_FILE, WEIGHTS_FILE):  # what `tumorseg predict models:/...` rebuilds the model from
        run.log_artifact(Path(out_dir) / name_)
    run.log_metrics({"best_val_dice_mean": best["score"], "best_epoch": best["epoch"]})
    if run.run:
        import matplotlib.pyplot as plt

        fig = loss_figure(history, name)
        run.log_figure(fig, "loss_curves.png")
        plt.close(fig)
        model.load_state_dict(best["state"])
        example = train_bank.batch(torch.zeros(1, dtype=torch.long, device=train_bank.rows_device))[0].cpu().numpy()
        run.log_model(copy.deepcopy(model).float().to(memory_format=torch.contiguous_format), example)
    run.end()
    checkpoint.clear_resume_state(checkpoint_dir)
    return config


def main(model: str, params_path: str | Path = "params.yaml") -> dict:
    """Stage entry point for ``train@<model>``: params ``train``, ``models.<model>``, ``mlflow``."""
    from tumorseg import paths
    from tumorseg.config import ParamsError, from_mapping, read_params
    from tumorseg.logs import setup_logging

    setup_logging()
    params = read_params(params_path)
    models = params.get("models") or {}
    if model not in models:
        raise ParamsError(f"params.yaml: no 'models.{model}' block; models defined: {sorted(models)}")
    train = from_mapping(TrainSettings, params.get("train"), "train")
    if train.nproc_per_node > 1 and not distributed.under_torchrun():
        distributed.relaunch(["-m", "tumorseg.training.loop", model, str(params_path)], train.nproc_per_node)
        return json.loads((paths.MODELS_DIR / model / CONFIG_FILE).read_text())
    return train_model(
        model,
        train,
        from_mapping(ModelSettings, models[model], f"models.{model}"),
        paths.PREPROCESSED_DIR, paths.SPLIT, paths.MODELS_DIR / model, paths.CHECKPOINTS_DIR / model,
        from_mapping(MlflowSettings, params.get("mlflow"), "mlflow"),
        preprocess_config=params.get("preprocess"), manifest_path=paths.MANIFEST,
    )


if __name__ == "__main__":  # what torchrun starts on every rank: python -m tumorseg.training.loop MODEL [PARAMS]
    import sys

    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "params.yaml")
