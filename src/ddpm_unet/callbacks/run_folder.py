"""A run folder is never reused by accident.

Running again with the `hydra.run.dir` of an earlier run (and no `ckpt_path`) used to overwrite
its config and `status.json`, mix the two runs' checkpoints, and (through Lightning's
`OnExceptionCheckpoint`) silently resume from the old weights. `check_run_folder` refuses it;
`RunFolderGuard` calls it as a Hydra callback, before Hydra writes anything into the folder,
and installs the deferred SIGTERM/SIGINT handling (`ddpm_unet.callbacks.signals`) from the
moment the folder exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from ddpm_unet.callbacks import signals
from ddpm_unet.utils.config_checks import ConfigError


def check_run_folder(output_dir: str | os.PathLike[str], ckpt_path: str | None) -> None:
    """Raise `ConfigError` if `output_dir` holds checkpoints of a run and `ckpt_path` is unset.

    The message names both ways out: resume (`ckpt_path=<dir>/checkpoints/last.ckpt`) or start
    over in a new folder.
    """
    if ckpt_path:
        return  # an explicit resume may continue in the same folder
    folder = Path(output_dir)
    found = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
    if not found:
        return
    resume = "last.ckpt" if "last.ckpt" in found else found[-1]
    if "interrupted.ckpt" in found:
        resume = "interrupted.ckpt"
    raise ConfigError(
        f"{folder} is the folder of an earlier run (checkpoints/{', '.join(found)}); starting a "
        f"new run there would overwrite its config, status and checkpoints. To continue it, "
        f"resume: ckpt_path={folder / 'checkpoints' / resume}. To start over, use a new folder: "
        f"leave hydra.run.dir unset (a fresh timestamped folder) or give another one."
    )


def _is_training_config(config: DictConfig) -> bool:
    return "trainer" in config and bool(config.get("train", True))


class RunFolderGuard(HydraCallback):
    """Hydra callback (configs/hydra/default.yaml): the checks above for `python train.py`.

    Extra DDP ranks re-run the job in rank 0's folder and are not checked (rank 0 was).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_training_config(config) or os.environ.get("LOCAL_RANK", "0") != "0":
            return
        signals.install()  # from here on a signal ends the run with status.json and a checkpoint
        try:
            check_run_folder(config.hydra.run.dir, config.get("ckpt_path"))
        except ConfigError as err:
            from ddpm_unet.utils.cli import TRACEBACK_ENV, report_user_error

            if os.environ.get(TRACEBACK_ENV):
                raise
            report_user_error(err)  # exit 2 with the message, nothing written

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_training_config(config) and os.environ.get("LOCAL_RANK", "0") == "0":
            signals.uninstall()
