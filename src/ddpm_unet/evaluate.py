"""Evaluation of a checkpoint: FID, KID, IS (`python eval.py ckpt_path=... num_samples=N`).

Steps, in an order that fails early:

1. resolve the InceptionV3 weights file (`InceptionWeightsNotFoundError` before any sampling);
2. load the checkpoint (EMA weights); build the Trainer of the `trainer` group; on rank 0,
   rebuild the checkpoint's dataset from `run_config["data"]` at the model's resolution and
   channel count (`data_root` overrides the data root);
3. (rank 0) name the reference cache entry (`ddpm_unet.metrics.reference_stats`) and check the
   cached features now: an unreadable entry is deleted with a warning and recomputed in step 5;
4. sample `num_samples` images on every device of the trainer (`ddpm_unet.generation.predict`:
   the same images for any batch size or number of ranks; shards written as they are made, so
   a rerun with the same `hydra.run.dir` continues an interrupted evaluation) and keep them as
   `samples.npz`;
5. (rank 0) torch-fidelity `calculate_metrics` on samples (input1) against the real images
   (input2, cached), on rank 0's device: the metrics are those of the assembled images, so
   they do not depend on the number of ranks either;
6. write `metrics.json` and send the metrics (`eval/fid`, ...) to the configured loggers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddpm_unet.generation.predict import generate
from ddpm_unet.generation.shards import write_npz
from ddpm_unet.metrics.fidelity import UInt8Images, fidelity_metrics
from ddpm_unet.metrics.inception import resolve_inception_weights
from ddpm_unet.metrics.reference_stats import (
    build_reference_set,
    cache_files,
    validate_reference_cache,
    write_cache_info,
)
from ddpm_unet.models.samplers import build_sampler
from ddpm_unet.sample import generation_info, load_model, prepare_generation, sampling_info
from ddpm_unet.utils.checkpoint import read_lit_checkpoint
from ddpm_unet.utils.config_checks import check_eval_config
from ddpm_unet.utils.distributed import isolated_distributed_job
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.instantiate import instantiate_loggers

log = logging.getLogger(__name__)


def reference_data_config(
    run_config: dict[str, Any] | None,
    image_size: int,
    image_channels: int,
    data_root: str | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """The checkpoint's data config, at the model's resolution, with optional root override.

    Raises:
        ValueError: the checkpoint holds no `run_config["data"]` (not written by our train.py).
    """
    if not run_config or "data" not in run_config:
        raise UserError(
            "the checkpoint has no run_config['data'] (it was not written by this project's "
            "train.py), so the dataset to compare with is unknown."
        )
    data = dict(run_config["data"])
    data.update(image_size=image_size, image_channels=image_channels, download=download)
    # Reference images are read once, in order: no worker processes, no pinned memory.
    data.update(num_workers=0, pin_memory=False)
    if data_root:
        data["root"] = data_root
    return data


def log_to_loggers(cfg: DictConfig, metrics: dict[str, float], step: int) -> None:
    """Send the config and `metrics` (as `eval/<name>`) to `cfg.logger` (if any); close W&B."""
    loggers = instantiate_loggers(cfg.get("logger"))
    if not loggers:
        return
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    config.pop("hydra", None)
    for logger in loggers:
        logger.log_hyperparams(config)
        logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        logger.finalize("success")
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:  # pragma: no cover - wandb is a dependency
        pass


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt_path`; write `<output_dir>/metrics.json`; return its content (rank 0;
    the other ranks only generate their share of the images and return an empty dict)."""
    check_eval_config(cfg)  # bad values name their key here, before any file is read
    num_samples = int(cfg.num_samples)
    metric_flags = {k: bool(cfg.metrics.get(k, False)) for k in ("fid", "kid", "isc", "prc")}
    if not any(metric_flags.values()):
        raise UserError("metrics: every metric is off; enable at least one of fid/kid/isc/prc.")
    sampler = build_sampler(cfg.get("sampler"))  # bad sampler settings stop the run here
    # 1. The weights before anything slow: a missing file must not cost a sampling run.
    weights = resolve_inception_weights(
        cfg.get("inception_weights"),
        download=bool(cfg.get("inception_download", True)),
        config_key="inception_weights",
        download_key="inception_download",
    )
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # 2-3. Model, devices and (rank 0) the real images.
    model = load_model(cfg.ckpt_path, "cpu")  # the trainer moves it to its device
    data_cfg = reference_data_config(
        model.run_config,
        model.image_size,
        model.image_channels,
        data_root=cfg.get("data_root"),
        download=bool(cfg.get("data_download", False)),
    )
    cache_root = Path(cfg.cache_dir)
    use_cache = bool(cfg.get("use_cache", True))
    with isolated_distributed_job():
        trainer, module, settings = prepare_generation(cfg, model, sampler, output_dir)
        reference = None
        if trainer.is_global_zero:
            reference = build_reference_set(
                data_cfg,
                cfg.reference_split,
                weights,
                num_images=cfg.get("num_reference"),
                subset_seed=int(cfg.get("reference_seed", 0)),
            )
            if use_cache:
                write_cache_info(cache_root, reference.cache_name, reference.key)
                # A damaged or planted entry is deleted (one warning) now, not after sampling.
                validate_reference_cache(cache_root, reference.cache_name)

        # 4. Samples, on every rank.
        start = time.perf_counter()
        array = generate(trainer, module, settings)
        sampling_s = time.perf_counter() - start
    if array is None or reference is None:  # not rank 0
        return {}
    cached_before = cache_files(cache_root, reference.cache_name) if use_cache else {}
    if cfg.get("save_samples", True):
        write_npz(output_dir / "samples.npz", {"images": array})

    # 5. torch-fidelity, on rank 0's device.
    device = trainer.strategy.root_device
    start = time.perf_counter()
    values = fidelity_metrics(
        UInt8Images(array),
        reference.images,
        weights,
        **metric_flags,
        feature_layer_fid=str(cfg.get("feature_layer_fid", "2048")),
        kid_subsets=int(cfg.get("kid_subsets", 100)),
        kid_subset_size=int(cfg.get("kid_subset_size", 1000)),
        isc_splits=int(cfg.get("isc_splits", 10)),
        batch_size=int(cfg.get("fidelity_batch_size", 64)),
        device=device,
        reference_cache_name=reference.cache_name if use_cache else None,
        cache_root=cache_root,
        save_cpu_ram=bool(cfg.get("save_cpu_ram", False)),
        verbose=bool(cfg.get("progress", True)),
    )
    metrics_s = time.perf_counter() - start
    cached_after = cache_files(cache_root, reference.cache_name) if use_cache else {}
    from_cache = bool(cached_before) and cached_before == cached_after

    # 6. Report.
    epoch, global_step = _checkpoint_position(cfg.ckpt_path)
    result: dict[str, Any] = {
        **values,
        "num_samples": num_samples,
        "num_reference": len(reference.images),
        "reference_split": cfg.reference_split,
        "reference_cache_name": reference.cache_name,
        "reference_from_cache": from_cache,
        "dataset": data_cfg["dataset"],
        "image_size": model.image_size,
        "image_channels": model.image_channels,
        "feature_layer_fid": str(cfg.get("feature_layer_fid", "2048")),
        "ckpt_path": str(cfg.ckpt_path),
        "epoch": epoch,
        "global_step": global_step,
        **sampling_info(sampler, model.diffusion.num_timesteps),
        **generation_info(trainer, module),
        "inception_weights": str(weights),
        "inception_device": str(device),
        "sampling_s": sampling_s,
        "metrics_s": metrics_s,
    }
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    module.store.remove()  # the images are in samples.npz (or were only needed for this)
    log.info("metrics: %s", json.dumps(values))
    log_to_loggers(cfg, values, step=global_step)
    return result


def _checkpoint_position(ckpt_path: str | Path) -> tuple[int, int]:
    """`(epoch, global_step)` of a checkpoint (the x-axis of the logged metrics)."""
    # Read as data only; mmap: the tensors are not read, only the small metadata entries.
    checkpoint = read_lit_checkpoint(ckpt_path)
    return int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0))
