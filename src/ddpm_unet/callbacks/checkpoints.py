"""Checkpoints that hold the newest finite state: `last.ckpt` at the end, `interrupted.ckpt`
on a signal, and never a file of non-finite weights."""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ddpm_unet.callbacks import signals
from ddpm_unet.callbacks.divergence import TrainingDivergedError
from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)


def refuse_nonfinite(trainer: L.Trainer, path: str) -> bool:
    """True (and an error in the log) when a parameter or floating buffer holds NaN/inf, so the
    checkpoint `path` must not be written."""
    module = trainer.lightning_module
    bad = [
        name
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        log.error(
            "Not saving %s at step %d: %d tensors hold NaN/inf (e.g. %s); the checkpoints on "
            "disk keep the last finite state.",
            path,
            trainer.global_step,
            len(bad),
            bad[0],
        )
    return bool(bad)


class LastStateCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` is always the newest state, and that never saves NaNs.

    Lightning's `save_last=True` only rewrites `last.ckpt` when a top-k checkpoint is saved, so
    after a final validation that did not improve the monitored metric, `last.ckpt` held an older
    step than the run ended at: here it is also written at the end of training.
    """

    _last_ckpt_step = -1  # the step last.ckpt was last written at

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        # Refused before Lightning updates its best-k list, which would otherwise delete the
        # best file on disk in favour of one never written (NaN weights, finite EMA loss).
        if not refuse_nonfinite(trainer, f"a top-k checkpoint in {self.dirpath}"):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not refuse_nonfinite(trainer, filepath):
            super()._save_checkpoint(trainer, filepath)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_ckpt_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stale = self._last_ckpt_step != trainer.global_step
        if self.save_last and stale and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class InterruptCheckpoint(Checkpoint):
    """Writes `<dirpath>/<filename>.ckpt` when a run is stopped by SIGTERM/SIGINT (whenever it
    lands), or crashes after training made progress; removed after a run that completes.

    Not Lightning's `OnExceptionCheckpoint`, whose mere presence makes `trainer.fit(
    ckpt_path=None)` resume from the newest checkpoint in the folder. Nothing is written for
    errors before any training step of this process (the file would hold an untrained model), a
    diverged run, non-finite weights, or a second Ctrl-C (stop at once).
    """

    def __init__(self, dirpath: str, filename: str = "interrupted") -> None:
        super().__init__()
        if not filename:
            raise UserError("InterruptCheckpoint filename='' : give a file name, e.g. interrupted.")
        self.ckpt_path = os.path.join(dirpath, filename + ".ckpt")
        self._start_step = 0
        self.saved_path: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        signals.attach_trainer(trainer)

    # The earliest points after a checkpoint's training state is restored: stop here if a signal
    # arrived while the run was being set up.
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        signals.raise_if_received(trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        signals.raise_if_received(trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the final sample grid and last.ckpt (checkpoint callbacks run last, in order).
        signals.raise_if_received(trainer.global_step)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, signals.TrainingInterrupted | SIGTERMException) or (
            isinstance(exception, KeyboardInterrupt) and signals.received() is not None
        )
        if not interrupted:
            if isinstance(exception, KeyboardInterrupt | TrainingDivergedError):
                return  # a forced stop, or weights that must not be resumed
            if trainer.global_step <= self._start_step:
                return  # nothing trained in this process: a user error before training
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> str | None:
        """Write the checkpoint now (also after `fit` returned); its path, or None if refused."""
        if refuse_nonfinite(trainer, self.ckpt_path):
            return None
        try:
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as err:  # never hide the error that stopped the run
            log.error("Could not write %s: %s", self.ckpt_path, err)
            return None
        self.saved_path = self.ckpt_path
        log.info("Saved %s at step %d.", self.ckpt_path, trainer.global_step)
        return self.ckpt_path

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Called after a fit that completed: a stale interrupted.ckpt (e.g. the one this run
        # resumed from) would suggest the run still needs resuming.
        if self.saved_path is None and trainer.is_global_zero and os.path.isfile(self.ckpt_path):
            os.remove(self.ckpt_path)
