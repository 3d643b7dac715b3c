"""A run folder is never reused by accident: running again in an earlier run's `hydra.run.dir`
(without `ckpt_path`) overwrote its config and `status.json` and mixed the two runs' checkpoints.
`RunFolderGuard` refuses it before Hydra writes anything into the folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from ddpm_unet.utils.errors import ConfigError


def check_run_folder(output_dir: str | os.PathLike[str], ckpt_path: str | None) -> None:
    """Raise `ConfigError` if `output_dir` holds checkpoints of a run and `ckpt_path` is unset;
    the message names both ways out (resume, or start over in a new folder)."""
    if ckpt_path:
        return  # an explicit resume may continue in the same folder
    folder = Path(output_dir)
    found = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
    if not found:
        return
    resume = next((n for n in ("interrupted.ckpt", "last.ckpt") if n in found), found[-1])
    raise ConfigError(
        f"{folder} is the folder of an earlier run (checkpoints/{', '.join(found)}); starting a "
        f"new run there would overwrite its config, status and checkpoints. To continue it, "
        f"resume: ckpt_path={folder / 'checkpoints' / resume}. To start over, use a new folder: "
        f"leave hydra.run.dir unset (a fresh timestamped folder) or give another one."
    )


class RunFolderGuard(HydraCallback):
    """Hydra callback (configs/hydra/default.yaml): `check_run_folder` for `python train.py`, on
    rank 0 (extra DDP ranks re-run the job in rank 0's checked folder). Hydra calls it before it
    writes `.hydra/` into the folder; multirun jobs always get new folders."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        training = "trainer" in config and bool(config.get("train", True))
        if not training or os.environ.get("LOCAL_RANK", "0") != "0":
            return
        try:
            check_run_folder(config.hydra.run.dir, config.get("ckpt_path"))
        except ConfigError as err:
            from ddpm_unet.utils.cli import TRACEBACK_ENV, report_user_error

            if os.environ.get(TRACEBACK_ENV):
                raise
            report_user_error(err)  # exit 2 with the message, nothing written
