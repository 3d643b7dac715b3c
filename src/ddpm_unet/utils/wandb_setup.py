"""W&B run identity: group multirun jobs by sweep, and continue the same run when resuming."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from ddpm_unet.utils.checkpoint import read_checkpoint


def wandb_run_id_from_checkpoint(ckpt_path: str | Path) -> str | None:
    """The W&B run id saved in a checkpoint by `LitDiffusion.on_save_checkpoint`, if any.

    Read as data only (`read_checkpoint`): a file that holds code raises `CheckpointError`.
    """
    run_id = read_checkpoint(ckpt_path).get("wandb_run_id")
    # A run id is a short string; anything else was not written by this project: ignored.
    return run_id if isinstance(run_id, str) and run_id else None


def configure_wandb(cfg: DictConfig) -> None:
    """Fill in `logger.wandb` (group, name, id) from the Hydra run; a no-op without W&B."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return
    with open_dict(wandb_cfg):
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            hydra_cfg = HydraConfig.get()
            # One W&B group per sweep, one W&B run per job (named by its overrides).
            if not wandb_cfg.get("group"):
                wandb_cfg.group = f"{cfg.task_name}-{Path(hydra_cfg.sweep.dir).name}"
            if not wandb_cfg.get("name"):
                wandb_cfg.name = hydra_cfg.job.override_dirname or f"job{hydra_cfg.job.num}"
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path and not wandb_cfg.get("id"):
            run_id = wandb_run_id_from_checkpoint(ckpt_path)
            if run_id:  # resuming continues the same W&B run (charts go on from the saved step)
                wandb_cfg.id = run_id
                wandb_cfg.resume = "allow"
