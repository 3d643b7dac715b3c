"""Sweep launchers: what a Ray job asks Ray for, which jobs Ray cannot run, shared-GPU warnings.

Under `hydra/launcher=ray` (configs/hydra/launcher/ray.yaml, run by
`hydra_plugins.ddpm_unet_launchers`) each job is a Ray task asking for the devices its trainer
uses (`${ray_num_gpus:...}`, resolved per job); Ray places it where they are free and points it
at its own GPUs, so 8 one-GPU jobs on an 8-GPU node run side by side.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# configs/hydra/launcher/ray.yaml has the name of hydra-ray-launcher's own config, which Hydra
# then uses as its schema (our keys fit it) with a deprecation warning on every run: expected,
# not shown. Set here, on import by ddpm_unet.train, and not in the plugin module: Hydra imports
# plugins inside `warnings.catch_warnings()`, which undoes filters set there.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against")


def uses_gpu(accelerator: Any) -> bool:
    """Whether a trainer with this `accelerator` trains on CUDA GPUs.

    `auto` means a GPU when the machine that starts the sweep has one (Lightning's own choice
    there); on a Ray cluster whose head node has no GPU, name `trainer=gpu` explicitly.
    """
    name = str(getattr(accelerator, "value", accelerator)).lower()
    if name == "auto":
        import torch

        return torch.cuda.is_available()
    return name in ("gpu", "cuda")


def ray_num_gpus(accelerator: Any, devices: Any) -> Any:
    """`${ray_num_gpus:${trainer.accelerator},${trainer.devices}}`: the GPUs one job asks for,
    `trainer.devices` on a GPU trainer, 0 otherwise (a `devices` that is not a count is passed
    through; `ray_job_problems` names it before any job starts)."""
    return devices if uses_gpu(accelerator) else 0


def register_launcher_resolvers() -> None:
    """Register `${ray_num_gpus:...}` (idempotent; needed before a Ray launcher config resolves)."""
    if not OmegaConf.has_resolver("ray_num_gpus"):
        OmegaConf.register_new_resolver("ray_num_gpus", ray_num_gpus)


def ray_job_problems(cfg: DictConfig) -> list[str]:
    """Why the job composed as `cfg` cannot run as a Ray task (empty: it can): `trainer.devices`
    must be a count (what the job asks Ray for), and one process on one node. Lightning's `ddp`
    re-runs the script for its other ranks, and a Ray task has none (it runs Ray's
    `default_worker.py`); `ddp_spawn` re-imports that worker as its main module, untested here."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    num_nodes = trainer.get("num_nodes", 1)
    problems = []
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        problems.append(
            f"trainer.devices={devices!r} is not a number of devices: under hydra/launcher=ray "
            "each job asks Ray for trainer.devices GPUs (or CPUs), so give a count, e.g. "
            "trainer.devices=1."
        )
    elif devices > 1:
        problems.append(
            f"trainer.devices={devices} (strategy {trainer.get('strategy', 'auto')!r}) would run "
            "DDP inside a Ray task, where Lightning cannot start the other ranks (it re-runs the "
            "script, and a Ray worker has none): use trainer.devices=1 (Ray then runs the jobs "
            "side by side, one device each), or run DDP jobs with hydra/launcher=slurm or the "
            "default launcher."
        )
    if num_nodes != 1:
        problems.append(
            f"trainer.num_nodes={num_nodes!r}: a Ray task runs on one node; use "
            "trainer.num_nodes=1 with hydra/launcher=ray (several nodes: hydra/launcher=slurm)."
        )
    return problems


def warn_if_jobs_share_devices(cfg: DictConfig) -> None:
    """Warn when joblib (`hydra/launcher=local_parallel`) runs several GPU jobs at once: plain
    processes with no device assignment, they all use GPU 0."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    n_jobs = launcher.get("n_jobs", 1)
    trainer = cfg.get("trainer") or {}
    if target.endswith("JoblibLauncher") and n_jobs != 1 and uses_gpu(trainer.get("accelerator")):
        log.warning(
            "hydra/launcher=local_parallel runs %s jobs at once and they share the GPUs (each "
            "trains on GPU 0 unless trainer.devices says otherwise); for one GPU per job use "
            "hydra/launcher=ray.",
            n_jobs,
        )
