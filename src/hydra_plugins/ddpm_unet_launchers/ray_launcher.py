"""`hydra/launcher=ray`: hydra-ray-launcher's `RayLauncher`, each job asking for its own devices.

The plugin resolves `hydra.launcher.ray.remote` once, from the sweep's base config, and one job
whose Ray worker dies ends the whole sweep. This subclass resolves it per job, checks every job
before any starts (`ray_job_problems`), and records a job whose worker died (out of memory, a
native crash) as failed in its `status.json`. Public APIs only: Hydra's `hydra.core` job helpers
and Ray's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm_unet.utils.cli import report_user_error
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.launchers import ray_job_problems, register_launcher_resolvers
from ddpm_unet.utils.resolvers import register_resolvers

log = logging.getLogger(__name__)

register_launcher_resolvers()  # before any launcher config is resolved
register_resolvers()  # a Ray worker imports this module, not train.py, before it resolves a job

# ray.init options that only apply when it starts a local Ray (it refuses them when connecting)
LOCAL_ONLY_INIT = ("num_cpus", "num_gpus", "resources", "object_store_memory", "include_dashboard")
# A small object store: jobs pass only their config and return one number.
LOCAL_OBJECT_STORE_BYTES = 78_643_200


def job_remote_options(job_cfg: DictConfig) -> dict[str, Any]:
    """The `ray.remote` options of one job: its `hydra.launcher.ray.remote`, resolved against
    the job's own config (its `trainer.devices`, `trainer.accelerator`), without null values."""
    remote = OmegaConf.to_container(job_cfg.hydra.launcher.ray.remote, resolve=True) or {}
    return {key: value for key, value in remote.items() if value is not None}


def init_options(init_cfg: DictConfig) -> dict[str, Any]:
    """`ray.init` keyword arguments: null values dropped (Ray's defaults), local-only options
    dropped when `address` connects to a running cluster."""
    init = OmegaConf.to_container(init_cfg, resolve=True) or {}
    init = {key: value for key, value in init.items() if value is not None}
    if init.get("address"):
        return {key: value for key, value in init.items() if key not in LOCAL_ONLY_INIT}
    init.setdefault("object_store_memory", LOCAL_OBJECT_STORE_BYTES)
    return init


def run_job_in_ray(
    hydra_context: HydraContext,
    job_cfg: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """The body of one Ray task: the job as Hydra runs it (its folder, logging, config)."""
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(job_cfg)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=job_cfg,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class PerJobRayLauncher(RayLauncher):
    """Hydra's `RayLauncher`, with per-job resources, up-front checks and crash records."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import ray

        assert self.config and self.hydra_context and self.task_function
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)

        jobs, problems = [], []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            job_cfg = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(job_cfg):
                # A scheduler's job id does not exist before Ray runs the task; as the plugin.
                job_cfg.hydra.job.id = f"job_id_for_{idx}"
                job_cfg.hydra.job.num = idx
            described = " ".join(filter_overrides(overrides)) or "(no overrides)"
            problems += [f"  #{idx} {described}\n    -> {p}" for p in ray_job_problems(job_cfg)]
            jobs.append((idx, described, job_cfg, list(overrides)))
        if problems:
            # Before Ray starts or any job runs; one message, no traceback (exit status 2).
            report_user_error(
                UserError(
                    f"{len(problems)} problem(s) in {len(jobs)} sweep job(s) for "
                    "hydra/launcher=ray; no job was launched:\n" + "\n".join(problems)
                )
            )

        init = init_options(self.ray_cfg.init)
        if ray.is_initialized():
            log.info("Ray is already running.")
        else:
            where = init.get("address") or "a local Ray started for this sweep"
            log.info("Ray launcher: %d jobs on %s; sweep dir %s", len(jobs), where, sweep_dir)
            ray.init(**init)
        runs = []
        for idx, described, job_cfg, overrides in jobs:
            options = job_remote_options(job_cfg)
            asked = ", ".join(f"{k}={v}" for k, v in options.items() if k.startswith("num_"))
            log.info("\t#%d : %s (Ray: %s)", idx, described, asked or "defaults")
            # `ray.remote(**options)`, not `.options(**options)`, which refuses `max_calls`
            # (and `ray.remote()` with no options is an error).
            task = ray.remote(**options)(run_job_in_ray) if options else ray.remote(run_job_in_ray)
            ref = task.remote(
                self.hydra_context, job_cfg, self.task_function, Singleton.get_state()
            )
            runs.append((ref, idx, job_cfg, overrides))
        return [self._result(ray, *run) for run in runs]

    @staticmethod
    def _result(
        ray: Any, ref: Any, idx: int, job_cfg: DictConfig, overrides: list[str]
    ) -> JobReturn:
        """The job's `JobReturn`; a worker that died becomes a failed job, not a failed sweep."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            # the job's output folder, as the job itself computes it
            folder = Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
            log.error("job #%d: its Ray worker died (%s); recorded in %s", idx, err, folder)
            if not (folder / "status.json").is_file():  # the job's own record wins
                from ddpm_unet.train import write_status

                first_line = (str(err).strip().splitlines() or [""])[0]
                write_status(
                    folder,
                    {
                        "status": "failed",
                        "error": f"{type(err).__name__}: {first_line}",
                        "traceback": str(err),
                        "end": time.time(),
                    },
                )
            # None, as ddpm_unet.train.run returns for a failed job: the sweep goes on
            return JobReturn(
                overrides=overrides,
                cfg=job_cfg,
                working_dir=str(folder),
                task_name=str(job_cfg.hydra.job.name),
                status=JobStatus.COMPLETED,
                _return_value=None,
            )
