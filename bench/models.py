"""Speed/size benchmark of the three models next to segmentation-models-pytorch's Unet-ResNet34.

Measures, per model: parameters, forward GFLOPs per image (torch.utils.flop_counter, which counts a
multiply-add as 2 FLOPs), and CPU images/s for inference and for a training step (forward +
backward + Adam step), in fp32, fp32 + channels_last and bf16 autocast + channels_last. Each rate is
the median of --repeats timed iterations after --warmup untimed ones; the models take turns repeat by
repeat in one process, so background load hits them alike and the columns are comparable. Writes a
markdown table (also printed) with the command line, torch version, CPU model and bf16 capabilities.

    python bench/models.py --batch 8 --size 240 --threads 2 --repeats 3 --out bench/results/models.md

The reference needs the bench extra: pip install segmentation-models-pytorch
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _output import cpu_model  # noqa: E402
from tumorseg.models import build_model, count_parameters  # noqa: E402
from tumorseg.models.blocks import DecoderBlock  # noqa: E402
from tumorseg.models.runtime import cpu_flags, cpu_has_fast_bf16  # noqa: E402

SMP_NAME = "smp Unet(resnet34)"
MODES = {
    # name: (channels_last, autocast dtype)
    "fp32": (False, None),
    "fp32+CL": (True, None),
    "bf16+CL": (True, torch.bfloat16),
}


def make_model(name: str, in_channels: int = 4, num_classes: int = 3) -> torch.nn.Module:
    if name == SMP_NAME:
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet34", encoder_weights=None, in_channels=in_channels, classes=num_classes)
    return build_model(name, in_channels=in_channels, num_classes=num_classes)


def forward_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOPs for one image."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x[:1])
    return counter.get_total_flops() / 1e9


def gflops_cell(model: torch.nn.Module, x: torch.Tensor) -> str:
    """GFLOPs as run; where the exact fused nearest-upsample + conv path is used, also the GFLOPs of
    the same function computed the plain way (upsample, concatenate, 3x3 conv), as smp does."""
    fused = [m for m in model.modules() if isinstance(m, DecoderBlock) and m.fast_upsample]
    run = forward_gflops(model, x)
    if not fused:
        return f"{run:.1f}"
    for block in fused:
        block.fast_upsample = False
    plain = forward_gflops(model, x)
    for block in fused:
        block.fast_upsample = True
    return f"{run:.1f} ({plain:.1f} plain)" if abs(plain - run) > 0.05 else f"{run:.1f}"


class Runner:
    """One model in one mode: an inference step and a training step (forward, backward, Adam)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, mode: str):
        channels_last, self.dtype = MODES[mode]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=fmt)
        self.x = x.contiguous(memory_format=fmt)
        gen = torch.Generator().manual_seed(0)
        self.target = (torch.rand(x.shape[0], 3, *x.shape[-2:], generator=gen) > 0.9).float()
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.dtype)

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            self.model(self.x)

    def train(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.model(self.x)
        loss = self.loss_fn(out.float(), self.target)
        loss.backward()
        self.opt.step()

    def close(self) -> None:
        self.model.to(memory_format=torch.contiguous_format)
        self.opt = None


def measure_side_by_side(
    models: dict[str, torch.nn.Module], x: torch.Tensor, mode: str, warmup: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """{name: (inference images/s, training images/s)} for one mode, the models taking turns."""
    runners = {name: Runner(model, x, mode) for name, model in models.items()}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for phase in ("infer", "train"):
        other = OtherLoad()
        for _ in range(warmup):
            for runner in runners.values():
                getattr(runner, phase)()
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, runner in runners.items():
                t0 = time.perf_counter()
                getattr(runner, phase)()
                times[name].append(time.perf_counter() - t0)
        for name in models:
            rates[name].append(x.shape[0] / statistics.median(times[name]))
        print(
            f"# {mode} {phase}: "
            + ", ".join(f"{n} {r[-1]:.2f} img/s" for n, r in rates.items())
            + f" (other processes: {other.fraction():.0%} of the CPU)",
            file=sys.stderr,
            flush=True,
        )
    for runner in runners.values():
        runner.close()
    return {name: (r[0], r[1]) for name, r in rates.items()}


class OtherLoad:
    """CPU time used by *other* processes while the benchmark runs (from /proc/stat minus our own
    CPU time), as a fraction of the machine: the honest caveat for a shared machine."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(v) for v in fields]
            busy = sum(ticks[:3]) + sum(ticks[5:8])  # user nice system (idle iowait) irq softirq steal
            busy_s = busy / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy_s = float("nan")
        own = os.times()
        return time.perf_counter(), busy_s, own.user + own.system

    def fraction(self) -> float:
        (t0, busy0, own0), (t1, busy1, own1) = self.start, self._sample()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * (os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--models",
        default=f"unet,resnet_unet,transunet,{SMP_NAME}",
        help=f"comma-separated; '{SMP_NAME}' is the reference",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    x = torch.randn(args.batch, 4, args.size, args.size)

    built = {name: make_model(name) for name in names}
    rows = {name: [name, f"{count_parameters(m) / 1e6:.1f}", gflops_cell(m, x)] for name, m in built.items()}
    other = OtherLoad()
    started = time.perf_counter()
    for mode in modes:
        for name, (inf, train) in measure_side_by_side(built, x, mode, args.warmup, args.repeats).items():
            rows[name] += [f"{inf:.2f}", f"{train:.2f}"]
    other_share = other.fraction()

    header = ["model", "params (M)", "fwd GFLOPs/img"]
    for mode in modes:
        header += [f"infer {mode}", f"train {mode}"]
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    cmd = shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"Command: `python bench/models.py {cmd}`",
        "",
        f"torch {torch.__version__}; {args.threads} threads; input {args.batch} x 4 x {args.size} x {args.size}; "
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, flags {', '.join(simd) or 'none of avx2/avx512/amx'} "
        f"(native bf16: {'yes' if cpu_has_fast_bf16() else 'no'}).",
        "",
        f"Rates in images/s: median of {args.repeats} timed steps after {args.warmup} warm-up; train = forward + "
        "backward + Adam step; CL = channels_last; bf16 = torch.autocast(cpu, bfloat16). GFLOPs from "
        'torch.utils.flop_counter (a multiply-add = 2 FLOPs); "(x plain)": the same model computed the '
        "textbook way; ours computes nearest-upsample + 3x3 conv exactly with 4/9 of the multiply-adds "
        "(tumorseg.models.blocks.upsample2x_conv3x3). Models take turns step by step. "
        f"Other processes used {other_share:.0%} of the CPU during the {time.perf_counter() - started:.0f} s "
        "of timing (0% = an undisturbed run).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows.values()),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
