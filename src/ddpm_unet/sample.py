"""Sampling from a checkpoint (`python sample.py ckpt_path=... num_samples=N` calls `run`).

Writes into the run's output directory:

* `samples.npz`: key `images`, uint8 `[N, H, W, C]` (C = 1 for grey, 3 for RGB);
* `grid.png`: the images in a grid;
* with `save_pngs=true`, `pngs/000000.png`, ... one file per image;
* `sample_info.json`: checkpoint, sampler settings, seed, time and images per second.

Images come from the EMA weights (`use_ema=true`); the same checkpoint, seed, sampler and
`batch_size` give the same images.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torchvision.utils import save_image

from ddpm_unet.metrics.fidelity import to_uint8_hwc
from ddpm_unet.models.lit_diffusion import LitDiffusion
from ddpm_unet.models.samplers import DDPM, Sampler, build_sampler
from ddpm_unet.utils.checkpoint import (
    CheckpointNotFoundError,
    model_from_checkpoint,
    read_lit_checkpoint,
)
from ddpm_unet.utils.config_checks import check_sample_config
from ddpm_unet.utils.images import images_to_grid
from ddpm_unet.utils.resolvers import grid_upscale

log = logging.getLogger(__name__)


def resolve_device(device: str | None) -> torch.device:
    """`auto` (or None): CUDA when available, else the CPU; otherwise `torch.device(device)`."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(ckpt_path: str | Path | None, device: torch.device | str = "cpu") -> LitDiffusion:
    """`LitDiffusion` from a checkpoint of this project, on `device`, in eval mode.

    Read by `ddpm_unet.utils.checkpoint` as data only (`weights_only=True`).

    Raises:
        CheckpointNotFoundError: `ckpt_path` is unset or names no file.
        CheckpointError: the file is not a checkpoint of this project's model (see
            `read_checkpoint`), or its weights do not fit the model it describes.
    """
    if ckpt_path in (None, "", "???"):
        raise CheckpointNotFoundError(
            "ckpt_path is not set: pass the checkpoint to use, e.g. "
            "ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt"
        )
    checkpoint = read_lit_checkpoint(ckpt_path)
    model = model_from_checkpoint(checkpoint, ckpt_path)
    return model.to(device).eval()


def sampling_info(sampler: Sampler, num_timesteps: int) -> dict[str, Any]:
    """What `sample_info.json`/`metrics.json` record of the sampler: its name, its model calls
    per image (`steps`) and every setting (`sampler_settings`)."""
    settings = sampler.settings()
    settings.pop("sampler")
    return {
        "sampler": sampler.name,
        "steps": sampler.num_model_calls(num_timesteps),
        "sampler_settings": settings,
    }


def generate(
    model: LitDiffusion,
    num_samples: int,
    sampler: Sampler | None = None,
    seed: int | None = 0,
    batch_size: int | None = None,
    use_ema: bool = True,
    progress: bool = True,
) -> torch.Tensor:
    """`[num_samples, C, H, W]` images in [-1, 1] with one progress bar over all batches' steps.

    `sampler`: a `Sampler` (DDPM over all T steps when None)."""
    sampler = DDPM() if sampler is None else sampler
    bar: Any = None
    wrap: bool | Callable[[Iterable[int]], Iterable[int]] = False
    if progress:
        from tqdm.auto import tqdm

        batch = batch_size or num_samples
        n_batches = -(-num_samples // batch)
        bar = tqdm(
            total=n_batches * sampler.num_model_calls(model.diffusion.num_timesteps),
            desc=f"{sampler.name} sampling {num_samples} images",
            unit="step",
        )

        def wrap(iterable: Iterable[int]) -> Iterator[int]:
            for item in iterable:
                yield item
                bar.update(1)

    try:
        return model.sample_images(
            num_samples,
            sampler,
            seed=seed,
            batch_size=batch_size,
            use_ema=use_ema,
            progress=wrap,  # type: ignore[arg-type]  # a callable wrapper is passed through
        )
    finally:
        if bar is not None:
            bar.close()


def save_outputs(
    images: torch.Tensor,
    output_dir: str | Path,
    nrow: int | None = None,
    upscale: int = 1,
    save_pngs: bool = False,
) -> dict[str, str]:
    """Write `samples.npz` (uint8 `[N, H, W, C]`), `grid.png` and optionally one PNG per image."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    array = to_uint8_hwc(images)
    np.savez(out / "samples.npz", images=array)
    nrow = nrow or max(1, int(len(images) ** 0.5))
    save_image(images_to_grid(images, nrow, upscale), out / "grid.png")
    paths = {"samples": str(out / "samples.npz"), "grid": str(out / "grid.png")}
    if save_pngs:
        png_dir = out / "pngs"
        png_dir.mkdir(exist_ok=True)
        for i, image in enumerate(array):
            # Grey images as 8-bit grey PNGs ("L"), RGB as RGB.
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                png_dir / f"{i:06d}.png"
            )
        paths["pngs"] = str(png_dir)
    return paths


def run(cfg: DictConfig) -> dict[str, Any]:
    """Load `cfg.ckpt_path`, sample `cfg.num_samples` images, write them; return the info dict."""
    check_sample_config(cfg)  # bad values name their key here, before the checkpoint is read
    sampler = build_sampler(cfg.get("sampler"))  # bad sampler settings stop here too
    device = resolve_device(cfg.get("device"))
    model = load_model(cfg.get("ckpt_path"), device)
    start = time.perf_counter()
    images = generate(
        model,
        int(cfg.num_samples),
        sampler,
        seed=cfg.get("seed"),
        batch_size=cfg.get("batch_size"),
        use_ema=bool(cfg.get("use_ema", True)),
        progress=bool(cfg.get("progress", True)),
    )
    seconds = time.perf_counter() - start
    output_dir = Path(cfg.paths.output_dir)
    paths = save_outputs(
        images,
        output_dir,
        nrow=cfg.get("nrow"),
        upscale=grid_upscale(model.image_size) if cfg.get("upscale") is None else int(cfg.upscale),
        save_pngs=bool(cfg.get("save_pngs", False)),
    )
    info = {
        "ckpt_path": str(cfg.ckpt_path),
        "num_samples": int(cfg.num_samples),
        "shape": list(images.shape[1:]),
        **sampling_info(sampler, model.diffusion.num_timesteps),
        "seed": cfg.get("seed"),
        "batch_size": cfg.get("batch_size"),
        "use_ema": bool(cfg.get("use_ema", True)),
        "device": str(device),
        "sampling_s": seconds,
        "images_per_s": int(cfg.num_samples) / seconds if seconds > 0 else None,
        **paths,
    }
    (output_dir / "sample_info.json").write_text(json.dumps(info, indent=2))
    log.info(
        "%d images in %.1f s (%.2f images/s) -> %s",
        info["num_samples"],
        seconds,
        info["images_per_s"] or 0.0,
        output_dir,
    )
    return info
