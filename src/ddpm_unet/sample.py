"""Sampling from a checkpoint (`python sample.py ckpt_path=... num_samples=N` calls `run`).

Writes into the output directory `samples.npz` (`images` uint8 `[N, H, W, C]`; `labels` int64
`[N]` for a class-conditional checkpoint), `grid.png` (ordered by class), with `save_pngs=true`
`pngs/000000.png`..., and `sample_info.json` (checkpoint, sampler, model calls per image `nfe`,
seed, labels, guidance scale, time). Generation runs on the `trainer` group's devices, gives the
same bytes for any `batch_size` and device count, stops on SIGTERM/Ctrl-C within one denoising
step (exit status 128 + the signal), and continues an interrupted run in the same `hydra.run.dir`.

This module and `evaluate.py` read the config keys; `ddpm_unet.generation` knows none.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_unet.generation.core import effective_model_batch
from ddpm_unet.generation.guidance import (
    check_guidance_scale,
    order_by_class,
    resolve_labels,
    runs_both_halves,
)
from ddpm_unet.generation.predict import GenerationModule, generate
from ddpm_unet.generation.shards import FORMAT, ShardStore, write_npz
from ddpm_unet.models.samplers import DDPM, Sampler
from ddpm_unet.utils.checkpoint import (
    CheckpointNotFoundError,
    model_from_checkpoint,
    read_lit_checkpoint,
)
from ddpm_unet.utils.config_checks import check_sample_config
from ddpm_unet.utils.distributed import install_hydra_ddp_launcher, isolated_distributed_job
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.images import grid_to_uint8, images_to_grid, save_png
from ddpm_unet.utils.interrupts import Interrupted, handle_signals, signal_name
from ddpm_unet.utils.resolvers import grid_upscale

if TYPE_CHECKING:
    from ddpm_unet.models.lit_diffusion import LitDiffusion

log = logging.getLogger(__name__)
install_hydra_ddp_launcher()  # DDP ranks re-run this job, in its output folder (as train.py)

ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}  # torch device type -> Lightning's
# Shard-manifest entries -> the key a user changes them with (named when a rerun differs).
SETTING_KEYS = {
    "checkpoint": "ckpt_path",
    "image_shape": "ckpt_path",
    "precision": "trainer.precision",
}


def load_model(ckpt_path: str | Path | None, device: torch.device | str = "cpu") -> LitDiffusion:
    """`LitDiffusion` from a checkpoint of this project (read as data only), on `device`, in eval
    mode; `CheckpointNotFoundError` when `ckpt_path` is unset or names no file, `CheckpointError`
    when it is no checkpoint of this project's model or its weights do not fit that model."""
    if ckpt_path in (None, "", "???"):
        raise CheckpointNotFoundError(
            "ckpt_path is not set: pass the checkpoint to use, e.g. "
            "ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt"
        )
    checkpoint = read_lit_checkpoint(ckpt_path)
    return model_from_checkpoint(checkpoint, ckpt_path).to(device).eval()


def device_overrides(trainer_cfg: Mapping[str, Any], device: str | None) -> dict[str, Any]:
    """Trainer arguments for the `device` shortcut of `sample.py`/`eval.py`: `auto` (or None)
    keeps the trainer group's choice; `cpu`, `cuda`, `cuda:N`, `mps` pick that one device (a
    `UserError` if the trainer group asks for several)."""
    if device in (None, "auto"):
        return {}
    parsed = torch.device(str(device))
    if parsed.type not in ACCELERATORS:
        raise UserError(f"device={device} is not a device: use auto, cpu, cuda, cuda:N or mps.")
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1) or 1
    if devices not in (1, "1", None, "auto") or int(nodes) != 1:
        raise UserError(
            f"device={device} picks one device, but trainer.devices={devices} and "
            f"trainer.num_nodes={nodes} ask for several: leave device=auto and let the trainer "
            "group choose (e.g. trainer=ddp), or use trainer=default with device=...."
        )
    index = parsed.index if parsed.type == "cuda" else None
    return {"accelerator": ACCELERATORS[parsed.type], "devices": [index] if index else 1}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def prepare_generation(
    cfg: DictConfig, model: LitDiffusion, sampler: Sampler | None
) -> tuple[L.Trainer, GenerationModule, dict[str, Any]]:
    """What `sample.py` and `eval.py` share: the labels and guidance scale (checked against the
    checkpoint's classes first), the Trainer of `cfg.trainer` (no loggers, checkpoints, summary
    or batch bar), the module generating into `<output_dir>/shards/`, and the settings those
    images depend on (the shard manifest)."""
    num_samples = int(cfg.num_samples)
    num_classes = getattr(model, "num_classes", None)  # None: unconditional (or an old checkpoint)
    guidance_scale = check_guidance_scale(cfg.guidance_scale, num_classes)
    labels = resolve_labels(
        _plain(cfg.labels), num_samples, num_classes, getattr(model, "class_names", None)
    )
    both = runs_both_halves(labels, guidance_scale)
    model_batch = effective_model_batch(int(cfg.model_batch), num_samples, both)
    sampler = DDPM() if sampler is None else sampler  # built by the config check
    trainer = instantiate(
        cfg.trainer,
        **device_overrides(cfg.trainer, cfg.device),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,  # generation shows its own step bar
        benchmark=False,  # see generation/predict.py
        use_distributed_sampler=True,  # each rank its own indices
    )
    shape = (model.image_channels, model.image_size, model.image_size)
    module = GenerationModule(
        model.ema.module if cfg.use_ema else model.net,
        model.diffusion,
        sampler,
        ShardStore(Path(cfg.paths.output_dir) / "shards", SETTING_KEYS),
        num_samples=num_samples,
        seed=cfg.seed,
        image_shape=shape,
        model_batch=model_batch,
        batch_size=int(cfg.batch_size or num_samples),
        progress=bool(cfg.progress),
        labels=labels,
        guidance_scale=guidance_scale,
    )
    stat = os.stat(cfg.ckpt_path)
    settings = {
        "format": FORMAT,
        # Path, size and time: a `last.ckpt` overwritten by further training is another one.
        "checkpoint": {
            "path": os.path.realpath(cfg.ckpt_path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        },
        "num_samples": num_samples,
        "seed": None if cfg.seed is None else int(cfg.seed),
        "sampler": sampler.settings(),
        "use_ema": bool(cfg.use_ema),
        "model_batch": model_batch,
        "precision": str(trainer.precision),
        "image_shape": list(shape),
    }
    if labels is not None:  # not in an unconditional run's manifest: its old shards stay valid
        settings["labels"] = _plain(cfg.labels)
        settings["guidance_scale"] = guidance_scale
    return trainer, module, settings


def generate_or_stop(
    trainer: L.Trainer, module: GenerationModule, settings: Mapping[str, Any]
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """`generate`, stopping on SIGTERM/Ctrl-C within one denoising step: the shards written stay,
    the message says how to continue, and the process exits with 128 + the signal number."""
    try:
        with handle_signals():
            return generate(trainer, module, settings)
    except Interrupted as stop:
        shards = module.store.valid_shards(module.num_samples, module.image_hwc)
        kept = sum(len(indices) for indices, _ in shards)
        msg = (
            "%s: stopped; %d images kept in %s; rerun the same command (same hydra.run.dir) to "
            "continue"
        )
        log.error(msg, signal_name(stop.signum), kept, module.store.folder)
        raise SystemExit(stop.exit_code) from None


def class_rows(images: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, int]:
    """`[N, C, H, W]` images -> one row per class present (ascending, images in index order),
    rows filled up to the longest with white images; and the row length."""
    classes = np.unique(labels)
    length = max(int((labels == c).sum()) for c in classes)
    rows = []
    for c in classes:
        row = images[torch.from_numpy(np.flatnonzero(labels == c))]
        blank = torch.ones(length - len(row), *images.shape[1:])
        rows += [row, blank]
    return torch.cat(rows), length


def run(cfg: DictConfig) -> dict[str, Any]:
    """Load `cfg.ckpt_path`, sample `cfg.num_samples` images on the trainer's devices, write
    them (rank 0); return the info dict (empty on the other ranks)."""
    sampler = check_sample_config(cfg)  # bad values name their key, before the checkpoint is read
    model = load_model(cfg.ckpt_path, "cpu")  # the trainer moves it to its device
    out = Path(cfg.paths.output_dir)
    with isolated_distributed_job():
        trainer, module, settings = prepare_generation(cfg, model, sampler)
        images, generated = generate_or_stop(trainer, module, settings)
    if images is None:  # not rank 0: rank 0 writes the outputs
        return {}
    labels = module.labels
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    paths = {"samples": str(write_npz(out / "samples.npz", arrays))}
    upscale = grid_upscale(model.image_size) if cfg.upscale is None else int(cfg.upscale)
    # uint8 -> [-1, 1] exactly (k / 127.5 - 1 rounds back to k), so the grid has the same pixels.
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if labels is not None and cfg.nrow is None:
        as_float, nrow = class_rows(as_float, labels)
    else:
        as_float = as_float[order_by_class(labels, len(images))]
        nrow = cfg.nrow or max(1, int(len(images) ** 0.5))
    grid = grid_to_uint8(images_to_grid(as_float, nrow, upscale))
    paths["grid"] = str(save_png(grid, out / "grid.png"))
    if cfg.save_pngs:
        for i, image in enumerate(images):  # grey images as 8-bit grey PNGs, RGB as RGB
            save_png(image[..., 0] if image.shape[-1] == 1 else image, out / f"pngs/{i:06d}.png")
        paths["pngs"] = str(out / "pngs")
    seconds = generated["sampling_s"]
    info = {
        "ckpt_path": str(cfg.ckpt_path),
        "num_samples": int(cfg.num_samples),
        "shape": [images.shape[3], images.shape[1], images.shape[2]],
        **generated,
        "class_names": getattr(model, "class_names", None),
        "images_per_s": generated["generated"] / seconds if seconds > 0 else None,
        **paths,
    }
    (out / "sample_info.json").write_text(json.dumps(info, indent=2))
    module.store.remove()  # everything is in samples.npz now
    msg = "%d images (%d generated, %d from an earlier run's shards) in %.1f s -> %s"
    log.info(msg, info["num_samples"], generated["generated"], generated["reused"], seconds, out)
    return info
