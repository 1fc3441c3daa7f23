"""Where a GPU training step's time goes (issue 14, item 2, after bench/gpu.py): the fixed per-step cost.

bench/gpu.py found on an H100 that training throughput grows in proportion to the batch size (a constant ~40-50 ms per
step, whatever the batch): the step is bound by something other than the GPU's arithmetic. This script, run once on
the GPU with bench/gpu.py's full-size synthetic data (``--work``, built by bench/gpu.py or here), measures per model:

1. **The step under torch.profiler**: the pipeline's own ``train_model`` (the ``eager`` configuration of bench/gpu.py:
   cuDNN autotuning, fused AdamW, bf16, channels_last) for ``--steps`` steps; the GPU's busy time per step (the sum of
   the kernels' own time) against the wall time per step, kernel launches per step, and the operators that take the
   most host time and the most GPU time. GPU busy well below wall: the host (Python, launches, synchronisations) sets
   the pace. ``--variants`` adds the same for ``eager_fastpath`` (the decoder's phase-decomposed upsampling conv on
   the GPU too, as before FAST_UPSAMPLE_DEVICES) and ``graph`` (``train.cuda_graph: true``).
2. **Batch size sweep** (``--batches``; learning rate scaled with the batch): training slices per second.
3. **CUDA graphs**: ``train.compile`` with ``torch.compile(mode="reduce-overhead")`` (replays the step's kernels as
   one graph, which removes per-kernel launch cost) at the first batch size, after ``--compile-epochs`` epochs.

    python bench/gpu_profile.py --work .bench-gpu --out bench/results/gpu_profile.md        # on the GPU
    python bench/gpu_profile.py --device cpu --patients 3 --shape 64 64 32 --steps 4 --batches 2 4   # CPU smoke test
    python bench/gpu_profile.py --work .bench-gpu --no-sweep --variants eager eager_fastpath graph   # step 1 only

Throughputs come from the loop's own ``on_epoch`` timings (the epoch's GPU work synchronised); the profiler's own
overhead inflates step 1's wall time, so the sweep's figures, not step 1's, are the speeds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from _output import emit  # noqa: E402
from gpu import PROFILE, build_dataset  # noqa: E402  (the same data and per-model settings as bench/gpu.py)
from tumorseg.models import MODEL_NAMES  # noqa: E402
from tumorseg.training.settings import AugmentSettings, ModelSettings, TrainSettings  # noqa: E402


def settings(name: str, device: str, batch: int, steps: int, epochs: int, compile_step: bool,
             cuda_graph: bool = False) -> tuple[TrainSettings, ModelSettings]:
    p = PROFILE[name]
    train = TrainSettings(epochs=epochs, samples_per_epoch=steps * batch, patch_size=0, foreground_fraction=0.33, patience=0,
                          device=device, amp="auto", channels_last=True, deterministic=False, compile=compile_step,
                          cuda_graph=cuda_graph, augment=AugmentSettings(), eval_batch_size=32, seed=42, max_val_slices=64)
    scale = batch / p["batch_size"]
    return train, ModelSettings(lr=p["lr"] * scale, batch_size=batch, arch=p["arch"])


def run(name: str, train: TrainSettings, model: ModelSettings, work: Path) -> list[dict]:
    from tumorseg.training.loop import train_model

    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        train_model(name, train, model, work / "pre", work / "split.parquet", Path(tmp) / "out", Path(tmp) / "ckpt",
                    on_epoch=records.append)
    return records


@contextlib.contextmanager
def variant_context(variant: str):
    """``eager_fastpath``: the decoder's phase-decomposed conv on every device, as before FAST_UPSAMPLE_DEVICES."""
    import tumorseg.models.blocks as blocks

    original = blocks.FAST_UPSAMPLE_DEVICES
    if variant == "eager_fastpath":
        blocks.FAST_UPSAMPLE_DEVICES = frozenset({"cpu", "cuda"})
    try:
        yield
    finally:
        blocks.FAST_UPSAMPLE_DEVICES = original


def profiled_step(name: str, device: str, batch: int, steps: int, work: Path, variant: str = "eager") -> tuple[list[str], str]:
    """Row of figures and the top-operator tables of ``steps`` training steps under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    graph = variant == "graph"
    with variant_context(variant):
        run(name, *settings(name, device, batch, 6 if graph else 2, 1, False, graph), work)  # warm-up: autotuning, allocator
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        train, model = settings(name, device, batch, steps, 1, False, graph)
        with profile(activities=activities) as prof:
            records = run(name, train, model, work)
    events = prof.key_averages()
    use_device = device == "cuda"
    gpu_us = sum(e.self_device_time_total for e in events) if use_device else 0.0
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    wall_ms = records[0]["train_seconds"] / steps * 1e3
    busy_ms = gpu_us / 1e3 / steps  # includes validation's kernels: an upper bound on the training step's
    row = [name, variant, str(batch), f"{wall_ms:.1f}", f"{busy_ms:.1f}" if use_device else "n/a",
           f"{busy_ms / wall_ms:.0%}" if use_device else "n/a", f"{launches / steps:.0f}" if use_device else "n/a"]
    tables = [f"#### {name} ({variant}), batch {batch}: operators by host time", "", "```",
              events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50), "```"]
    if use_device:
        tables += ["", f"#### {name} ({variant}), batch {batch}: operators by GPU time", "", "```",
                   events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=50), "```"]
    return row, "\n".join(tables)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    ap.add_argument("--steps", type=int, default=30, help="training steps per measured epoch")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--compile-epochs", type=int, default=3, help="epochs of the reduce-overhead run (the first compiles)")
    ap.add_argument("--variants", nargs="+", default=["eager"], choices=["eager", "eager_fastpath", "graph"])
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="step 1 only: no batch sweep, no CUDA graphs")
    ap.add_argument("--work", type=Path, default=REPO / ".bench-gpu")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke test of this script only")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu_profile.py needs a CUDA GPU; none is visible (--device cpu runs a smoke test)")
    from tumorseg.logs import setup_logging

    setup_logging()
    info = build_dataset(args.work, args.patients, tuple(args.shape), workers=max(1, min(16, os.cpu_count() or 1)))
    t_start = time.perf_counter()
    profile_rows, tables, sweep_rows = [], [], []
    for name in args.models:
        for variant in args.variants:
            try:
                row, table = profiled_step(name, args.device, args.batches[0], args.steps, args.work, variant)
            except Exception as exc:  # a variant failing (graph capture, say) must not lose the others
                row, table = [name, variant, str(args.batches[0]), f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}",
                              "", "", ""], ""
            profile_rows.append("| " + " | ".join(row) + " |")
            tables.append(table)
            print(profile_rows[-1], flush=True)
        if not args.sweep:
            continue
        speeds = {}
        for batch in args.batches:
            records = run(name, *settings(name, args.device, batch, args.steps, 2, False), args.work)
            speeds[f"eager, batch {batch}"] = records[-1]["slices"] / records[-1]["train_seconds"]
        original = torch.compile
        torch.compile = functools.partial(original, mode="reduce-overhead")
        try:
            torch._dynamo.reset()
            records = run(name, *settings(name, args.device, args.batches[0], args.steps, args.compile_epochs, True), args.work)
            speeds[f"reduce-overhead, batch {args.batches[0]}"] = records[-1]["slices"] / records[-1]["train_seconds"]
        except Exception as exc:  # a compiler failure is a finding, not a reason to lose the other figures
            speeds[f"reduce-overhead, batch {args.batches[0]}"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        finally:
            torch.compile = original
        base = speeds[f"eager, batch {args.batches[0]}"]
        for how, speed in speeds.items():
            cell = f"{speed:.0f} | {speed / base:.2f}x" if isinstance(speed, float) else f"{speed} | "
            sweep_rows.append(f"| {name} | {how} | {cell} |")
            print(sweep_rows[-1], flush=True)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU"
    text = "\n".join([
        f"`python bench/gpu_profile.py --steps {args.steps} --batches {' '.join(map(str, args.batches))} --variants "
        f"{' '.join(args.variants)}{'' if args.sweep else ' --no-sweep'}` on {gpu}, torch "
        f"{torch.__version__}: {info['patients']} synthetic patients at {' x '.join(map(str, info['shape']))}, whole slices, "
        f"bf16 autocast on CUDA, channels_last, cuDNN autotuning, fused AdamW; {time.perf_counter() - t_start:.0f} s in all", "",
        "One epoch under torch.profiler (its overhead included in the wall time; GPU busy includes the epoch's validation "
        "kernels, so it is an upper bound):", "",
        "| model | variant | batch | wall per step (ms) | GPU busy per step (ms) | busy share | kernel launches per step |",
        "|---|---|---|---|---|---|---|", *profile_rows, "",
        *(["Training slices per second (second epoch; reduce-overhead: the last epoch, after compiling):", "",
           "| model | how | slices/s | vs eager at the first batch |", "|---|---|---|---|", *sweep_rows, ""] if args.sweep else []),
        *tables])
    emit(text, args.out)


if __name__ == "__main__":
    main()
