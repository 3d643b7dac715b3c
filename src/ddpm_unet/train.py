"""Training: compose the objects named by the config and fit (`python train.py` calls `run`)."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from ddpm_unet.callbacks.sample_grid import SampleGrid
from ddpm_unet.utils.checkpoint import InterruptCheckpoint, read_lit_checkpoint
from ddpm_unet.utils.compat import install_hydra_ddp_launcher
from ddpm_unet.utils.config_checks import check_train_config, run_config_of  # noqa: F401 (tests)
from ddpm_unet.utils.distributed import isolated_distributed_job
from ddpm_unet.utils.errors import ConfigError
from ddpm_unet.utils.files import atomic_write
from ddpm_unet.utils.interrupts import Interrupted, handle_signals, signal_name
from ddpm_unet.utils.launchers import warn_if_jobs_share_devices

log = logging.getLogger(__name__)


@rank_zero_only
def write_status(output_dir: str | Path, status: dict[str, Any]) -> None:
    """`<run>/status.json`: completed or failed, with metrics or the error; read by the report."""
    path = Path(output_dir) / "status.json"
    text = json.dumps(status, indent=2, default=str)
    try:  # atomic: never a half-written status for the report to choke on
        atomic_write(path, lambda fh: fh.write(text.encode()))
    except OSError as err:  # a full disk must not hide the error that ended the run
        log.error("could not write %s (%s); the status was: %s", path, err, status.get("status"))


def fit(cfg: DictConfig) -> dict[str, float]:
    """Build data, model, callbacks, loggers and trainer from `cfg` (all checked before anything
    is written); fit; return final metrics."""
    if cfg.extras.ignore_warnings:
        warnings.filterwarnings("ignore")
    built = check_train_config(cfg)  # bad values and combinations fail here, before any data
    model, trainer, loggers = built.model, built.trainer, built.loggers
    if cfg.init_from:
        load_init_weights(model, cfg.init_from)
    hparams = {**model.run_config, "model/params/total": model.num_parameters}
    hparams["model/params/trainable"] = sum(
        p.numel() for p in model.net.parameters() if p.requires_grad
    )
    for logger in loggers:  # Lightning's loggers write on rank 0 only
        logger.log_hyperparams(hparams)
    if trainer.world_size == 1:
        # On one process ResumeState restores the position in an interrupted epoch, so
        # Lightning's warning that the dataloader is not resumable does not apply.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")

    if cfg.train:
        _fit_or_interrupt(trainer, model, built.datamodule, cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) or v}
    metrics["global_step"] = trainer.global_step
    metrics["params"] = model.num_parameters
    for ckpt_cb in _model_checkpoints(trainer):
        if ckpt_cb.monitor and ckpt_cb.best_model_score is not None:
            # best/val/loss, best/val/fid: the number a sweep compares jobs by
            metrics[f"best/{ckpt_cb.monitor}"] = float(ckpt_cb.best_model_score)
            metrics[f"best/{ckpt_cb.monitor}/checkpoint"] = ckpt_cb.best_model_path
    if cfg.train:
        log_run_summary(trainer, metrics)
    return metrics


def load_init_weights(model: L.LightningModule, path: str) -> None:
    """`init_from=<path>`: the network's weights (and its EMA's, when the checkpoint has them;
    else the EMA starts from the network) from a checkpoint read as data only; the optimiser,
    the lr schedule and the step start afresh. Refused (`ConfigError`) at the first weight
    whose name or shape differs. The checkpoint's `run_config` is recorded in this run's as
    `init_from: {ckpt_path, run_config}`."""
    checkpoint = read_lit_checkpoint(path, key="init_from")
    found, own = checkpoint["state_dict"], model.state_dict()
    has_ema = any(name.startswith("ema.") for name in found)
    wanted = {k: v for k, v in own.items() if has_ema or not k.startswith("ema.")}
    for name in [*wanted, *found]:
        mine, theirs = wanted.get(name), found.get(name)
        if mine is None or theirs is None or mine.shape != theirs.shape:

            def shape(t: torch.Tensor | None) -> str:
                return "absent" if t is None else str(list(t.shape))

            raise ConfigError(
                f"init_from={path} holds another network than the configured model: {name} is "
                f"{shape(theirs)} in the checkpoint, {shape(mine)} here. Configure the model "
                "as in that run (its .hydra/config.yaml), or train without init_from."
            )
    model.load_state_dict(found, strict=False)  # every weight checked above; EMA maybe not
    if not has_ema:
        model.ema.module.load_state_dict(model.net.state_dict())
    model.run_config["init_from"] = {"ckpt_path": str(path), "run_config": checkpoint["run_config"]}
    log.info("init_from=%s: network%s weights loaded; step 0", path, " and EMA" if has_ema else "")


def _model_checkpoints(trainer: L.Trainer) -> list[ModelCheckpoint]:
    # Not InterruptCheckpoint, which is a checkpoint callback too (unmonitored, no last.ckpt).
    return [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]


class TrainingInterrupted(Interrupted):
    """`Interrupted` while training: `step` is the optimiser step reached, `checkpoint` the file
    that holds it (None when nothing could be saved)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        super().__init__(signum)
        self.step, self.checkpoint = step, checkpoint


def _fit_or_interrupt(
    trainer: L.Trainer, model: L.LightningModule, datamodule: Any, ckpt_path: str | None
) -> None:
    """`trainer.fit`; a SIGTERM/SIGINT (`InterruptCheckpoint` stops the loops at a safe point and
    saves, Lightning raises `SIGTERMException` in validation) becomes `TrainingInterrupted`."""
    install_hydra_ddp_launcher()  # DDP ranks re-run this job, in its output folder
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (Interrupted, SIGTERMException) as err:
        saver = next((cb for cb in trainer.callbacks if isinstance(cb, InterruptCheckpoint)), None)
        signum = getattr(err, "signum", signal.SIGTERM)
        path = saver.saved_path if saver is not None else None
        raise TrainingInterrupted(signum, trainer.global_step, path) from err


@rank_zero_only
def log_run_summary(trainer: L.Trainer, metrics: dict[str, Any]) -> None:
    """One block at the end of the run (train.log and screen): metrics and where the files are."""
    lines = [f"Run summary: {trainer.global_step} steps, {trainer.current_epoch} epochs"]
    for key, value in sorted(metrics.items()):
        if not key.startswith("best/") and isinstance(value, float):
            lines.append(f"  {key}: {value:.6g}")
    for ckpt_cb in _model_checkpoints(trainer):
        if ckpt_cb.monitor and ckpt_cb.best_model_path:
            score = ckpt_cb.best_model_score
            score_text = f"{float(score):.6g}" if score is not None else "?"
            lines.append(f"  best {ckpt_cb.monitor} ({score_text}): {ckpt_cb.best_model_path}")
        if ckpt_cb.last_model_path:
            lines.append(f"  last checkpoint: {ckpt_cb.last_model_path}")
    for cb in trainer.callbacks:
        if isinstance(cb, SampleGrid) and cb.last_grid_path is not None:
            lines.append(f"  final samples: {cb.last_grid_path}")
    log.info("\n".join(lines))


def run(cfg: DictConfig) -> float | None:
    """Fit, record `status.json`, and return `cfg.optimized_metric` for Hydra sweepers.

    In a multirun a failed job (bad config, out of memory, ...) is recorded as failed and
    returns None so the sweep goes on; in a single run the error is raised. None, not NaN, also
    when the metric was never computed or is not finite: hydra-optuna-sweeper records a None as
    a failed trial, while a NaN makes it crash the whole study ("Values were told ...").
    """
    output_dir = cfg.paths.output_dir
    start = time.time()

    def record(status: str, **fields: Any) -> None:
        end = time.time()  # start/end as Unix times: when sweep jobs ran side by side
        timing = {"wall_s": end - start, "start": start, "end": end}
        write_status(output_dir, {"status": status, **fields, **timing})

    warn_if_jobs_share_devices(cfg)  # local_parallel: GPU jobs side by side share GPU 0
    try:
        with handle_signals(), isolated_distributed_job():
            metrics = fit(cfg)
    except TrainingInterrupted as stop:
        record(
            "interrupted",
            signal=signal_name(stop.signum),
            step=stop.step,
            checkpoint=stop.checkpoint,
            resume=f"ckpt_path={stop.checkpoint}" if stop.checkpoint else None,
        )
        log.warning(
            "%s: stopped at step %s; %s",
            signal_name(stop.signum),
            stop.step,
            f"resume with ckpt_path={stop.checkpoint}" if stop.checkpoint else "nothing saved",
        )
        # 128 + signal number, as a shell reports a process ended by that signal (130, 143);
        # `train && eval` then stops, also in a multirun.
        raise SystemExit(stop.exit_code) from None
    except Exception as err:
        record("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            raise
        log.error("job failed (recorded in %s/status.json): %s", output_dir, err)
        return None
    finally:
        wandb = sys.modules.get("wandb")  # not imported: no W&B run to end
        if wandb is not None and wandb.run is not None:
            wandb.finish()  # so the next job of a multirun starts its own W&B run
    record("completed", metrics=metrics)
    value = metrics.get(cfg.optimized_metric or "")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
