"""Our U-Net against the peers' U-Nets on the same layouts: training step and sampling step.

The peers, each built as its own README builds it, to our layouts:
* diffusers' `UNet2DModel` (Hugging Face), `block_out_channels`/`layers_per_block` and attention
  blocks (`AttnDownBlock2D`/`AttnUpBlock2D`) at the levels where ours has attention;
* lucidrains' `Unet` (denoising-diffusion-pytorch), `dim`/`dim_mults`, `full_attn` at the levels
  where ours has attention (its other levels use its linear attention: that is its design, kept).

Layouts: `unet_small` (the digits model: 32 channels, x1/x2/x2, attention at 4x4 px, 8x8 grey
images; with two residual blocks per level, as lucidrains' `Unet` always has, where the default
unet_small config now has one) and `ddpm_cifar10` (the DDPM paper's CIFAR-10 network: 128
channels, x1/x2/x2/x2, attention at 16x16 px, 32x32 RGB images).

A training step is eps-prediction MSE forward + backward + AdamW step on random images and
timesteps; a sampling step is one network call under `torch.inference_mode` (what every sampler
step costs). After warm-up, blocks of steps run in a rotating order (ours, diffusers, lucidrains,
then the next order ...) so that load from other processes hits all three; each network's time is
the median over its blocks. Ratios are taken within this one run.

    pip install -e ".[bench]"
    python benchmarks/peer_speed.py --markdown benchmarks/results/peer_speed_cpu.md
    python benchmarks/peer_speed.py --device cuda --markdown benchmarks/results/peer_speed_gpu.md
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (see benchmarks/unet_speed.py); read once by
# libgomp when torch loads, hence before the imports.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ddpm_unet.models.unet import UNet  # noqa: E402


@dataclass(frozen=True)
class Layout:
    """One network layout, stated once and translated into each library's arguments."""

    name: str
    image_channels: int
    image_size: int
    n_channels: int
    ch_mults: tuple[int, ...]
    is_attn: tuple[bool, ...]
    n_groups: int
    batch: dict[str, int]  # batch size per device type


LAYOUTS = {
    "unet_small": Layout(
        "unet_small", 1, 8, 32, (1, 2, 2), (False, True, False), 8, {"cpu": 256, "cuda": 256}
    ),
    "ddpm_cifar10": Layout(
        "ddpm_cifar10",
        3,
        32,
        128,
        (1, 2, 2, 2),
        (False, True, False, False),
        32,
        {"cpu": 8, "cuda": 128},
    ),
}


class EpsNet(nn.Module):
    """Adapts a peer's network to `forward(x [b,C,H,W], t [b]) -> eps [b,C,H,W]`."""

    def __init__(
        self, net: nn.Module, call: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    ):
        super().__init__()
        self.net = net
        self.call = call

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.call(self.net, x, t)


def build_ours(layout: Layout) -> nn.Module:
    return UNet(
        image_channels=layout.image_channels,
        n_channels=layout.n_channels,
        ch_mults=layout.ch_mults,
        is_attn=layout.is_attn,
        n_blocks=2,
        n_groups=layout.n_groups,
        dropout=0.0,
    )


def build_diffusers(layout: Layout) -> nn.Module:
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in layout.is_attn)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(layout.is_attn))
    net = UNet2DModel(
        sample_size=layout.image_size,
        in_channels=layout.image_channels,
        out_channels=layout.image_channels,
        block_out_channels=tuple(layout.n_channels * m for m in layout.ch_mults),
        layers_per_block=2,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=layout.n_groups,
    )
    return EpsNet(net, lambda n, x, t: n(x, t).sample)


def build_lucidrains(layout: Layout) -> nn.Module:
    from denoising_diffusion_pytorch import Unet

    net = Unet(
        dim=layout.n_channels,
        dim_mults=layout.ch_mults,
        channels=layout.image_channels,
        full_attn=layout.is_attn,
    )
    return EpsNet(net, lambda n, x, t: n(x, t))


BUILDERS: dict[str, Callable[[Layout], nn.Module]] = {
    "ours": build_ours,
    "diffusers": build_diffusers,
    "lucidrains": build_lucidrains,
}


def train_step(
    net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor
) -> None:
    """eps-prediction MSE forward + backward + AdamW step (`x` stands in for the noisy images)."""
    noise = torch.randn_like(x)
    loss = F.mse_loss(net(x, t), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per call of `fn`, over `steps` calls."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_layout(layout: Layout, device: torch.device, args: argparse.Namespace) -> list[dict]:
    batch = args.batch or layout.batch[device.type]
    gen = torch.Generator().manual_seed(0)
    shape = (batch, layout.image_channels, layout.image_size, layout.image_size)
    x = torch.randn(shape, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    nets, opts, params = {}, {}, {}
    for name in args.peers:
        torch.manual_seed(0)
        net = BUILDERS[name](layout).to(device)
        nets[name], params[name] = net, sum(p.numel() for p in net.parameters())
        opts[name] = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def train_fn(name: str) -> Callable[[], None]:
        return lambda: train_step(nets[name], opts[name], x, t)

    def sample_fn(name: str) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                nets[name](x, t)

        return call

    rows = []
    for kind, make in (("train", train_fn), ("sample", sample_fn)):
        for name in args.peers:
            for net in nets.values():
                net.train(kind == "train")
            time_block(make(name), args.warmup, device)
        times: dict[str, list[float]] = {name: [] for name in args.peers}
        order = list(args.peers)
        for _ in range(args.blocks):
            for name in order:
                times[name].append(time_block(make(name), args.steps, device))
            order = order[1:] + order[:1]  # rotate: each network runs first, middle and last
        ours = statistics.median(times["ours"]) if "ours" in times else None
        for name in args.peers:
            sec = statistics.median(times[name])
            rows.append(
                {
                    "layout": layout.name,
                    "step": kind,
                    "network": name,
                    "params": params[name],
                    "batch": batch,
                    "ms": sec * 1e3,
                    "img_s": batch / sec,
                    "ours_speedup": sec / ours if ours else float("nan"),
                }
            )
            print(
                f"{layout.name:13s} {kind:6s} {name:10s} {params[name]:>12,d} params  "
                f"{sec * 1e3:9.1f} ms  {batch / sec:9.1f} img/s",
                flush=True,
            )
    return rows


def markdown(
    rows: list[dict], args: argparse.Namespace, device: torch.device, seconds: float
) -> str:
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        dev = f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    import diffusers

    peers = [f"diffusers {diffusers.__version__}"]
    try:
        from importlib.metadata import version

        peers.append(f"denoising-diffusion-pytorch {version('denoising-diffusion-pytorch')}")
    except Exception:  # noqa: BLE001 - only for the header
        pass
    lines = [
        "# Our U-Net against diffusers' UNet2DModel and lucidrains' Unet",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- device: {dev}",
        f"- torch {torch.__version__}, {', '.join(peers)}, Python {platform.python_version()}",
        f"- command: `python benchmarks/peer_speed.py {shlex.join(sys.argv[1:])}`",
        f"- settings: {args.blocks} blocks of {args.steps} steps per network, "
        f"warm-up {args.warmup}; networks alternate block by block in a rotating order; "
        "time = median over blocks",
        f"- total benchmark time: {seconds:.0f} s; load average at end: "
        + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "- train step: eps MSE forward + backward + AdamW step; sample step: one network call "
        "(inference mode), what every sampler step costs",
        "- `ours is Nx faster` = the network's time / our time, same run",
        "",
        "| layout | step | network | params | batch | ms/step | img/s | ours is Nx faster |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['step']} | {r['network']} | {r['params']:,} | {r['batch']} | "
            f"{r['ms']:,.1f} | {r['img_s']:,.1f} | {r['ours_speedup']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--peers", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--batch", type=int, default=None, help="override each layout's batch")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=6, help="timed blocks per network")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    device = torch.device(args.device)
    start = time.perf_counter()
    rows = [row for name in args.layouts for row in bench_layout(LAYOUTS[name], device, args)]
    text = markdown(rows, args, device, time.perf_counter() - start)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
