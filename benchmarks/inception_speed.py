"""Inception feature extraction on the CPU: images/s by thread count, batch size and layout.

The slow part of `eval.py` on a CPU is InceptionV3 at 299x299 (FID, KID and IS need its
2048-d pool features and logits). This measures torch-fidelity's `FeatureExtractorInceptionV3`
(the network `eval.py` runs, random weights from `make_random_inception_weights`: speed does not
depend on their values) on uint8 3x32x32 batches, for:

* 1 thread (the figure measured before, and what a DDP rank on a 2-core machine is left with);
* every available core (what `eval.py` now uses for Inception, `metrics.fidelity.cpu_threads`,
  unless `OMP_NUM_THREADS` is set);
* channels-last weights and inputs, for comparison.

Configurations are measured in turns (round-robin, `--rounds` times) and the median kept, so
that other work on a shared machine spreads over all of them rather than hitting one.

    python benchmarks/inception_speed.py                   # ~3 min on 2 cores
    python benchmarks/inception_speed.py --batch-sizes 32 64 --rounds 5
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
from pathlib import Path

import torch

from ddpm_unet.metrics.fidelity import available_cores
from ddpm_unet.metrics.inception import make_random_inception_weights


def build(channels_last: bool) -> torch.nn.Module:
    """torch-fidelity's extractor with random weights, asking for what FID + KID + IS need."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with tempfile.TemporaryDirectory() as tmp:
        weights = make_random_inception_weights(Path(tmp) / "inception.pth", seed=0)
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(weights),
        ).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def seconds_per_batch(net: torch.nn.Module, batch: torch.Tensor, threads: int) -> float:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        start = time.perf_counter()
        net(batch)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--rounds", type=int, default=3, help="timed batches per configuration")
    parser.add_argument("--markdown", default="benchmarks/results/inception_cpu.md")
    args = parser.parse_args()

    cores = available_cores()
    thread_counts = sorted({1, cores})
    nets = {False: build(False), True: build(True)}
    configs = [
        (threads, batch, layout)
        for batch in args.batch_sizes
        for threads in thread_counts
        for layout in (False, True)
        if not layout or threads == cores  # channels-last at full threads only
    ]
    images = {b: torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8) for b in args.batch_sizes}
    for threads, batch, layout in configs:  # warm-up: allocations, oneDNN kernel selection
        seconds_per_batch(nets[layout], images[batch], threads)
    times: dict[tuple[int, int, bool], list[float]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for config in configs:
            threads, batch, layout = config
            times[config].append(seconds_per_batch(nets[layout], images[batch], threads))
            print(config, f"{batch / times[config][-1]:.2f} img/s", flush=True)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = [
        "# Inception feature extraction on the CPU",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"- machine: {platform.processor() or platform.machine()}, {cores} cores available; "
        f"torch {torch.__version__}",
        f"- load average at the end (1/5/15 min): {load} (a shared machine: other jobs ran)",
        f"- command: `python {' '.join(sys.argv)}`",
        "- torch-fidelity's InceptionV3 (random weights), features `2048` + `logits_unbiased`,",
        "  uint8 3x32x32 inputs resized to 299x299 inside; `torch.inference_mode`; median of",
        f"  {args.rounds} batches per row, rows measured in turns",
        "",
        "| threads | batch | layout | s/batch | images/s |",
        "| ---: | ---: | --- | ---: | ---: |",
    ]
    for config in configs:
        threads, batch, layout = config
        median = statistics.median(times[config])
        lines.append(
            f"| {threads} | {batch} | {'channels_last' if layout else 'contiguous'} | "
            f"{median:.2f} | {batch / median:.2f} |"
        )
    report = "\n".join(lines) + "\n"
    path = Path(args.markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
