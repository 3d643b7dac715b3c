"""Sampling and FID-evaluation speed: DDPM-1000 vs DDIM-50, and Inception images/s.

Two measurements, written as a markdown report:

1. **FID evaluation throughput**: images per second through torch-fidelity's InceptionV3
   (`FeatureExtractorInceptionV3`, the real architecture; 299x299 TF-1.x resize of uint8 32x32
   RGB inputs), asking for the features FID/KID (`2048`) and IS (`logits_unbiased`) need. The
   weights are random (`make_random_inception_weights`): speed does not depend on their values,
   and nothing is downloaded.
2. **Sampling throughput** of `unet_small` (1x8x8) and `unet_ddpm_cifar10` (3x32x32) with random
   weights in eval mode: seconds per denoising step (a model call and the sampler's `step`,
   what `Sampler.sample` loops over) at a fixed batch size, timed over
   `--steps` steps after a warm-up step, and images/s derived as
   `batch / (seconds_per_step * steps)` for DDPM-1000 and DDIM-50. For models where a whole run
   fits in `--full-run-budget` seconds, the whole DDIM-50 run is also timed end to end
   (`DDIM.sample`), as a check of the derivation.

    python benchmarks/sampling_fid_speed.py                        # CPU, ~3 min
    python benchmarks/sampling_fid_speed.py --device cuda --markdown benchmarks/results/x.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from model_configs import net_kwargs

from ddpm_unet.metrics.inception import make_random_inception_weights
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers import DDIM, DDPM, Chain, Sampler
from ddpm_unet.models.unet import UNet

MODELS: dict[str, dict[str, Any]] = {
    # configs/model/unet_small.yaml (the results file was measured on its earlier two-block
    # layout, 1,545,889 parameters)
    "unet_small": {
        "net": net_kwargs("unet_small"),
        "image_size": 8,
        "batch_size": {"cpu": 64, "cuda": 256},
    },
    "unet_ddpm_cifar10": {
        "net": net_kwargs("unet_ddpm_cifar10", "cifar10"),
        "image_size": 32,
        "batch_size": {"cpu": 8, "cuda": 128},
    },
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of `fn` (device work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------
def inception_throughput(
    device: torch.device, batch_size: int, batches: int, features: list[str]
) -> dict[str, Any]:
    """Images/s of torch-fidelity's InceptionV3 on uint8 32x32 RGB batches."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with tempfile.TemporaryDirectory() as tmp:
        weights = make_random_inception_weights(Path(tmp) / "inception.pth", seed=0)
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat", features, feature_extractor_weights_path=str(weights)
        ).to(device)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    with torch.no_grad():
        timed(lambda: net(images), device)  # warm-up (allocations, kernel selection)
        seconds = [timed(lambda: net(images), device) for _ in range(batches)]
    per_batch = statistics.median(seconds)
    return {
        "features": "+".join(features),
        "batch_size": batch_size,
        "batches": batches,
        "s_per_batch": per_batch,
        "images_per_s": batch_size / per_batch,
    }


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def sampling_speed(
    name: str, device: torch.device, steps: int, full_run_budget: float
) -> dict[str, Any]:
    """Seconds per DDPM and DDIM step of model `name`, images/s derived for 1000 vs 50 steps."""
    spec = MODELS[name]
    batch = spec["batch_size"]["cuda" if device.type == "cuda" else "cpu"]
    torch.manual_seed(0)
    net = UNet(**spec["net"]).to(device).eval()
    diffusion = GaussianDiffusion(num_timesteps=1000).to(device)
    shape = (batch, spec["net"]["image_channels"], spec["image_size"], spec["image_size"])
    x = torch.randn(shape, device=device)
    ddpm_sampler, ddim_sampler = DDPM(), DDIM(steps=50)
    ddpm_chain = Chain(diffusion, ddpm_sampler.timesteps(1000))
    ddim_chain = Chain(diffusion, ddim_sampler.timesteps(1000))
    ddim_t = ddim_chain.timesteps

    def one_step(sampler: Sampler, chain: Chain, i: int) -> torch.Tensor:
        t = torch.full((batch,), chain.t(i), device=device, dtype=torch.long)
        return sampler.step(chain, i, x, net(x, t))

    with torch.no_grad():
        one_step(ddpm_sampler, ddpm_chain, 0)  # warm-up
        ddpm = [
            timed(lambda i=i: one_step(ddpm_sampler, ddpm_chain, i), device) for i in range(steps)
        ]
        ddim = [
            timed(lambda i=i: one_step(ddim_sampler, ddim_chain, i), device) for i in range(steps)
        ]
    s_ddpm, s_ddim = statistics.median(ddpm), statistics.median(ddim)
    result: dict[str, Any] = {
        "model": name,
        "params": sum(p.numel() for p in net.parameters()),
        "shape": "x".join(str(s) for s in shape[1:]),
        "batch_size": batch,
        "s_per_step_ddpm": s_ddpm,
        "s_per_step_ddim": s_ddim,
        "ddpm1000_images_per_s": batch / (1000 * s_ddpm),
        "ddim50_images_per_s": batch / (len(ddim_t) * s_ddim),
        "ddim50_measured_images_per_s": None,
    }
    if 50 * s_ddim <= full_run_budget:
        generator = torch.Generator(device=device).manual_seed(0)
        seconds = timed(lambda: ddim_sampler.sample(net, diffusion, shape, generator), device)
        result["ddim50_measured_images_per_s"] = batch / seconds
    return result


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def markdown(
    fid_rows: list[dict[str, Any]], sample_rows: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} threads"
    )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = [
        "# Sampling and FID-evaluation speed",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- device: {device.type} ({where}); torch {torch.__version__}, "
        f"python {platform.python_version()}",
        f"- load average at the end (1/5/15 min): {load}" if load else "- load average: n/a",
        f"- command: `python {' '.join(sys.argv)}`",
        "- weights: random (speed does not depend on their values); eval mode, no grad, fp32",
        *([f"- note: {args.note}"] if args.note else []),
        "",
        "## FID evaluation: images/s through torch-fidelity's InceptionV3",
        "",
        "Inputs uint8 3x32x32, resized to 299x299 inside the extractor (as for every input size).",
        "`2048+logits_unbiased` is what FID, KID and IS need together (the full network); `64` is",
        "the first block only (the layer the tests use).",
        "",
        "| features | batch | s/batch | images/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in fid_rows:
        lines.append(
            f"| {row['features']} | {row['batch_size']} | {row['s_per_batch']:.3f} | "
            f"{row['images_per_s']:.1f} |"
        )
    n = 10_000
    full = next((r for r in fid_rows if "2048" in r["features"]), None)
    if full is not None:
        lines += [
            "",
            f"At {full['images_per_s']:.1f} images/s, `eval.py`'s default 10,000 samples take "
            f"~{n / full['images_per_s'] / 60:.0f} min of Inception time, and the 50,000 "
            f"CIFAR-10 training images ~{5 * n / full['images_per_s'] / 60:.0f} min once "
            "(then they come from the reference cache).",
        ]
    lines += [
        "",
        "## Sampling: DDPM-1000 vs DDIM-50",
        "",
        f"Seconds per denoising step are medians over {args.steps} steps (after a warm-up step) "
        "at the given batch size; images/s are **derived** from them as "
        "`batch / (s_per_step * steps)` (1000 DDPM steps, 50 DDIM steps), not measured over "
        "whole runs. `DDIM-50 measured` is a whole `GaussianDiffusion.sample` run, timed where "
        f"it fits in {args.full_run_budget:.0f} s.",
        "",
        "| model | params | image | batch | s/step DDPM | s/step DDIM | DDPM-1000 img/s | "
        "DDIM-50 img/s | DDIM-50 measured img/s | speed-up |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sample_rows:
        measured = r["ddim50_measured_images_per_s"]
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['shape']} | {r['batch_size']} | "
            f"{r['s_per_step_ddpm']:.4f} | {r['s_per_step_ddim']:.4f} | "
            f"{r['ddpm1000_images_per_s']:.3f} | {r['ddim50_images_per_s']:.2f} | "
            f"{'-' if measured is None else f'{measured:.2f}'} | "
            f"{r['ddim50_images_per_s'] / r['ddpm1000_images_per_s']:.1f}x |"
        )
    lines += [
        "",
        "A DDIM step costs what a DDPM step costs (one network evaluation), so DDIM-50 is ~20x",
        "faster than DDPM-1000 whatever the model; the network's size sets the absolute rate.",
        "Where the two s/step columns differ, that is timing noise (on a shared machine, other",
        "jobs), not the samplers: the speed-up column inherits it.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per sampler")
    parser.add_argument("--fid-batch", type=int, default=32, help="images per Inception batch")
    parser.add_argument("--fid-batches", type=int, default=3, help="timed Inception batches")
    parser.add_argument("--full-run-budget", type=float, default=20.0, help="seconds")
    parser.add_argument("--note", default="", help="a remark written into the report")
    parser.add_argument(
        "--markdown", default="benchmarks/results/sampling_fid_cpu.md", help="report path"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    fid_rows = []
    for features in (["2048", "logits_unbiased"], ["64"]):
        row = inception_throughput(device, args.fid_batch, args.fid_batches, features)
        print(f"inception {row['features']}: {row['images_per_s']:.1f} images/s", flush=True)
        fid_rows.append(row)
    sample_rows = []
    for name in args.models:
        row = sampling_speed(name, device, args.steps, args.full_run_budget)
        print(
            f"{name}: DDPM-1000 {row['ddpm1000_images_per_s']:.3f} img/s, "
            f"DDIM-50 {row['ddim50_images_per_s']:.2f} img/s "
            f"(measured {row['ddim50_measured_images_per_s']})",
            flush=True,
        )
        sample_rows.append(row)
    report = markdown(fid_rows, sample_rows, args)
    path = Path(args.markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
