"""Sampling from a checkpoint (`python sample.py ckpt_path=... num_samples=N` calls `run`).

Writes into the run's output directory `samples.npz` (key `images`, uint8 `[N, H, W, C]`),
`grid.png`, with `save_pngs=true` one `pngs/000000.png` per image, and `sample_info.json`
(checkpoint, sampler, seed, time, images per second). Generation (`ddpm_unet.generation.predict`)
runs on the devices of the `trainer` group, gives the same `samples.npz` bytes for any
`batch_size` and number of devices, and continues an interrupted run in the same
`hydra.run.dir` from its shards.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ddpm_unet.generation.predict import generate, prepare_generation
from ddpm_unet.generation.shards import write_npz
from ddpm_unet.models.lit_diffusion import LitDiffusion
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
    """`LitDiffusion` from a checkpoint of this project (read as data only), on `device`, in eval
    mode.

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
    return model_from_checkpoint(checkpoint, ckpt_path).to(device).eval()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Load `cfg.ckpt_path`, sample `cfg.num_samples` images on the trainer's devices, write
    them (rank 0); return the info dict (empty on the other ranks)."""
    check_sample_config(cfg)  # bad values name their key here, before the checkpoint is read
    model = load_model(cfg.get("ckpt_path"), "cpu")  # the trainer moves it to its device
    out = Path(cfg.paths.output_dir)
    with isolated_distributed_job():
        trainer, module, settings = prepare_generation(cfg, model)
        images, generated = generate(trainer, module, settings)
    if images is None:  # not rank 0: rank 0 writes the outputs
        return {}
    paths = {"samples": str(write_npz(out / "samples.npz", {"images": images}))}
    nrow = cfg.get("nrow") or max(1, int(len(images) ** 0.5))
    upscale = grid_upscale(model.image_size) if cfg.get("upscale") is None else int(cfg.upscale)
    # uint8 -> [-1, 1] exactly (k / 127.5 - 1 rounds back to k), so the grid has the same pixels.
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    grid = grid_to_uint8(images_to_grid(as_float, nrow, upscale))
    paths["grid"] = str(save_png(grid, out / "grid.png"))
    if cfg.get("save_pngs", False):
        for i, image in enumerate(images):  # grey images as 8-bit grey PNGs, RGB as RGB
            save_png(image[..., 0] if image.shape[-1] == 1 else image, out / f"pngs/{i:06d}.png")
        paths["pngs"] = str(out / "pngs")
    seconds = generated["sampling_s"]
    info = {
        "ckpt_path": str(cfg.ckpt_path),
        "num_samples": int(cfg.num_samples),
        "shape": [images.shape[3], images.shape[1], images.shape[2]],
        **generated,
        "images_per_s": generated["generated"] / seconds if seconds > 0 else None,
        **paths,
    }
    (out / "sample_info.json").write_text(json.dumps(info, indent=2))
    module.store.remove()  # everything is in samples.npz now
    log.info(
        "%d images (%d generated, %d from an earlier run's shards) in %.1f s -> %s",
        info["num_samples"],
        generated["generated"],
        generated["reused"],
        seconds,
        out,
    )
    return info
