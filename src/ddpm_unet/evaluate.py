"""Evaluation of a checkpoint: FID, KID, IS (`python eval.py ckpt_path=... num_samples=N`).

In an order that fails early: (1) resolve the InceptionV3 weights file; (2) load the checkpoint
and, on rank 0, its dataset (`run_config["data"]` at the model's resolution and channels;
`data_root` overrides the root) and the reference cache entry, checked now (an unreadable one is
deleted with a warning and recomputed); (3) sample as `sample.py` does (`generation.predict`);
(4) on rank 0, torch-fidelity on the assembled samples against the (cached) real images, so the
metrics do not depend on the number of ranks; (5) write `metrics.json` and log `eval/<metric>`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ddpm_unet.generation.shards import write_npz
from ddpm_unet.metrics.fidelity import UInt8Images, fidelity_metrics
from ddpm_unet.metrics.inception import resolve_inception_weights
from ddpm_unet.metrics.reference_stats import (
    build_reference_set,
    cache_files,
    validate_reference_cache,
    write_cache_info,
)
from ddpm_unet.sample import generate_or_stop, load_model, prepare_generation
from ddpm_unet.utils.checkpoint import read_lit_checkpoint
from ddpm_unet.utils.config_checks import check_eval_config, run_config_of
from ddpm_unet.utils.distributed import isolated_distributed_job
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.instantiate import instantiate_loggers

log = logging.getLogger(__name__)


def log_to_loggers(cfg: DictConfig, metrics: dict[str, float], step: int) -> None:
    """Send the config and `metrics` (as `eval/<name>`) to `cfg.logger` (if any); close W&B."""
    loggers = instantiate_loggers(cfg.get("logger"))  # absent with `logger: null`
    if not loggers:
        return
    config = run_config_of(cfg)  # resolved, without Hydra's settings
    for logger in loggers:
        logger.log_hyperparams(config)
        logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        logger.finalize("success")
    import wandb

    if wandb.run is not None:
        wandb.finish()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt_path`; write `<output_dir>/metrics.json`; return its content (rank 0;
    the other ranks only generate their share of the images and return an empty dict)."""
    sampler = check_eval_config(cfg)  # bad values name their key here, before any file is read
    metric_flags = {k: bool(cfg.metrics[k]) for k in ("fid", "kid", "isc", "prc")}
    if not any(metric_flags.values()):
        raise UserError("metrics: every metric is off; enable at least one of fid/kid/isc/prc.")
    # 1. The weights before anything slow: a missing file must not cost a sampling run.
    weights = resolve_inception_weights(cfg.inception_weights, bool(cfg.inception_download))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # 2. Model, devices and (rank 0) the real images.
    model = load_model(cfg.ckpt_path, "cpu")  # the trainer moves it to its device
    # Read now, not after the (long) sampling: a `last.ckpt` that training goes on overwriting
    # meanwhile must not lend its newer step to the metrics of the weights evaluated.
    epoch, global_step = _checkpoint_position(cfg.ckpt_path)
    if not model.run_config or "data" not in model.run_config:
        raise UserError(
            "the checkpoint has no run_config['data'] (it was not written by this project's "
            "train.py), so the dataset to compare with is unknown."
        )
    data_cfg = {
        **model.run_config["data"],
        "image_size": model.image_size,
        "image_channels": model.image_channels,
        "download": bool(cfg.data_download),
        # Reference images are read once, in order: no worker processes, no pinned memory.
        "num_workers": 0,
        "pin_memory": False,
    }
    if cfg.data_root:
        data_cfg["root"] = cfg.data_root
    cache_root = Path(cfg.cache_dir)
    use_cache = bool(cfg.use_cache)
    with isolated_distributed_job():
        trainer, module, settings = prepare_generation(cfg, model, sampler)
        reference = None
        if trainer.is_global_zero:
            reference = build_reference_set(
                data_cfg,
                cfg.reference_split,
                weights,
                num_images=cfg.num_reference,
                subset_seed=int(cfg.reference_seed),
            )
            if use_cache:
                write_cache_info(cache_root, reference.cache_name, reference.key)
                # A damaged or planted entry is deleted (one warning) now, not after sampling.
                validate_reference_cache(cache_root, reference.cache_name)
        # 3. Samples, on every rank.
        array, generated = generate_or_stop(trainer, module, settings)
    if array is None or reference is None:  # not rank 0
        return {}
    cached_before = cache_files(cache_root, reference.cache_name) if use_cache else {}
    if cfg.save_samples:
        labels = {} if module.labels is None else {"labels": module.labels}
        write_npz(output_dir / "samples.npz", {"images": array, **labels})

    # 4. torch-fidelity, on rank 0's device.
    device = trainer.strategy.root_device
    start = time.perf_counter()
    values = fidelity_metrics(
        UInt8Images(array),
        reference.images,
        weights,
        **metric_flags,
        feature_layer_fid=str(cfg.feature_layer_fid),
        kid_subsets=int(cfg.kid_subsets),
        kid_subset_size=int(cfg.kid_subset_size),
        isc_splits=int(cfg.isc_splits),
        batch_size=int(cfg.fidelity_batch_size),
        device=device,
        reference_cache_name=reference.cache_name if use_cache else None,
        cache_root=cache_root,
        save_cpu_ram=bool(cfg.save_cpu_ram),
        verbose=bool(cfg.progress),
    )
    metrics_s = time.perf_counter() - start
    cached_after = cache_files(cache_root, reference.cache_name) if use_cache else {}

    # 5. Report.
    result: dict[str, Any] = {
        **values,
        "num_samples": int(cfg.num_samples),
        "num_reference": len(reference.images),
        "reference_split": cfg.reference_split,
        "reference_cache_name": reference.cache_name,
        "reference_from_cache": bool(cached_before) and cached_before == cached_after,
        "dataset": data_cfg["dataset"],
        "image_size": model.image_size,
        "image_channels": model.image_channels,
        "feature_layer_fid": str(cfg.feature_layer_fid),
        "ckpt_path": str(cfg.ckpt_path),
        "epoch": epoch,
        "global_step": global_step,
        **generated,
        "inception_weights": str(weights),
        "inception_device": str(device),
        "metrics_s": metrics_s,
    }
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    module.store.remove()  # the images are in samples.npz (or were only needed for this)
    log.info("metrics: %s", json.dumps(values))
    log_to_loggers(cfg, values, step=global_step)
    return result


def _checkpoint_position(ckpt_path: str | Path) -> tuple[int, int]:
    """`(epoch, global_step)` of a checkpoint (the x-axis of the logged metrics), read as data."""
    checkpoint = read_lit_checkpoint(ckpt_path)
    return int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0))
