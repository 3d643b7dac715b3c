"""Sampling from a checkpoint (`python sample.py ckpt_path=... num_samples=N` calls `run`).

Writes into the run's output directory:

* `samples.npz`: key `images`, uint8 `[N, H, W, C]` (C = 1 for grey, 3 for RGB);
* `grid.png`: the images in a grid;
* with `save_pngs=true`, `pngs/000000.png`, ... one file per image;
* `sample_info.json`: checkpoint, sampler settings, seed, time and images per second.

Images come from the EMA weights (`use_ema=true`). Generation runs through Lightning's
`trainer.predict` on the devices of the `trainer` group (`trainer=ddp`: every GPU;
`trainer=ddp_sim`: two CPU processes), see `ddpm_unet.generation.predict`: image `i` depends
only on the checkpoint, the seed, the sampler (and `model_batch`) and `i`, so the same settings
give a byte-identical `samples.npz` for any `batch_size` and any number of devices. Batches are
written as shards into `shards/` as they are made: rerunning the same command with the same
`hydra.run.dir` after an interruption continues where it stopped (the shards are removed once
`samples.npz` is written).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from ddpm_unet.generation.core import effective_model_batch
from ddpm_unet.generation.predict import (
    GenerationModule,
    ShardWriter,
    build_trainer,
    generate,
    generation_settings,
)
from ddpm_unet.generation.shards import ShardStore, write_npz
from ddpm_unet.models.lit_diffusion import LitDiffusion
from ddpm_unet.models.samplers import Sampler, build_sampler
from ddpm_unet.utils.checkpoint import (
    CheckpointNotFoundError,
    model_from_checkpoint,
    read_lit_checkpoint,
)
from ddpm_unet.utils.config_checks import check_sample_config
from ddpm_unet.utils.distributed import install_hydra_ddp_launcher, isolated_distributed_job
from ddpm_unet.utils.images import grid_to_uint8, images_to_grid, save_png
from ddpm_unet.utils.resolvers import grid_upscale

log = logging.getLogger(__name__)
install_hydra_ddp_launcher()  # DDP ranks re-run this job, in its output folder (as train.py)


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


def save_outputs(
    images: np.ndarray,
    output_dir: str | Path,
    nrow: int | None = None,
    upscale: int = 1,
    save_pngs: bool = False,
) -> dict[str, str]:
    """Write `samples.npz` (key `images`: uint8 `[N, H, W, C]`, the same bytes for the same
    images), `grid.png` and optionally one PNG per image, from uint8 `images` `[N, H, W, C]`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_npz(out / "samples.npz", {"images": images})
    nrow = nrow or max(1, int(len(images) ** 0.5))
    # uint8 -> [-1, 1] exactly (k / 127.5 - 1 rounds back to k), so the grid has the same pixels.
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    save_png(grid_to_uint8(images_to_grid(as_float, nrow, upscale)), out / "grid.png")
    paths = {"samples": str(out / "samples.npz"), "grid": str(out / "grid.png")}
    if save_pngs:
        png_dir = out / "pngs"
        png_dir.mkdir(exist_ok=True)
        for i, image in enumerate(images):
            # Grey images as 8-bit grey PNGs ("L"), RGB as RGB.
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                png_dir / f"{i:06d}.png"
            )
        paths["pngs"] = str(png_dir)
    return paths


def prepare_generation(
    cfg: DictConfig, model: LitDiffusion, sampler: Sampler, output_dir: Path
) -> tuple[L.Trainer, GenerationModule, dict[str, Any]]:
    """The Trainer of `cfg.trainer`, the module that generates `cfg.num_samples` images of
    `model` with `sampler`, and the settings they depend on (the shard manifest)."""
    num_samples = int(cfg.num_samples)
    use_ema = bool(cfg.get("use_ema", True))
    model_batch = effective_model_batch(int(cfg.get("model_batch") or 1), num_samples)
    store = ShardStore(output_dir / "shards")
    trainer = build_trainer(cfg, callbacks=[ShardWriter(store)], device=cfg.get("device"))
    shape = (model.image_channels, model.image_size, model.image_size)
    module = GenerationModule(
        model.ema.module if use_ema else model.net,
        model.diffusion,
        sampler,
        store,
        num_samples=num_samples,
        seed=cfg.get("seed"),
        image_shape=shape,
        model_batch=model_batch,
        batch_size=int(cfg.get("batch_size") or num_samples),
        progress=bool(cfg.get("progress", True)),
    )
    settings = generation_settings(
        cfg.ckpt_path,
        num_samples,
        cfg.get("seed"),
        sampler,
        use_ema,
        model_batch,
        str(trainer.precision),
        shape,
    )
    return trainer, module, settings


def generation_info(trainer: L.Trainer, module: GenerationModule) -> dict[str, Any]:
    """What `sample_info.json`/`metrics.json` record of how the images were made."""
    plan = module.plan
    return {
        "seed": module.seed,
        "model_batch": module.model_batch,
        "batch_size": module.batch_size,
        "device": str(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "trainer_precision": str(trainer.precision),  # not "precision": a metric's name
        "generated": len(plan.todo) if plan is not None else None,
        "reused": plan.reused if plan is not None else None,
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Load `cfg.ckpt_path`, sample `cfg.num_samples` images on the trainer's devices, write
    them (rank 0); return the info dict (empty on the other ranks)."""
    check_sample_config(cfg)  # bad values name their key here, before the checkpoint is read
    sampler = build_sampler(cfg.get("sampler"))  # bad sampler settings stop here too
    model = load_model(cfg.get("ckpt_path"), "cpu")  # the trainer moves it to its device
    output_dir = Path(cfg.paths.output_dir)
    with isolated_distributed_job():
        trainer, module, settings = prepare_generation(cfg, model, sampler, output_dir)
        start = time.perf_counter()
        images = generate(trainer, module, settings)
        seconds = time.perf_counter() - start
    if images is None:  # not rank 0: rank 0 writes the outputs
        return {}
    paths = save_outputs(
        images,
        output_dir,
        nrow=cfg.get("nrow"),
        upscale=grid_upscale(model.image_size) if cfg.get("upscale") is None else int(cfg.upscale),
        save_pngs=bool(cfg.get("save_pngs", False)),
    )
    generated = generation_info(trainer, module)
    info = {
        "ckpt_path": str(cfg.ckpt_path),
        "num_samples": int(cfg.num_samples),
        "shape": [images.shape[3], images.shape[1], images.shape[2]],
        **sampling_info(sampler, model.diffusion.num_timesteps),
        **generated,
        "use_ema": bool(cfg.get("use_ema", True)),
        "sampling_s": seconds,
        "images_per_s": generated["generated"] / seconds if seconds > 0 else None,
        **paths,
    }
    (output_dir / "sample_info.json").write_text(json.dumps(info, indent=2))
    module.store.remove()  # everything is in samples.npz now
    log.info(
        "%d images (%d generated, %d from an earlier run's shards) in %.1f s -> %s",
        info["num_samples"],
        generated["generated"],
        generated["reused"],
        seconds,
        output_dir,
    )
    return info
