"""What an exact resume needs and Lightning does not put in a checkpoint: the RNG states and the
position in the epoch's data order (without them the diffusion noise, the time steps, dropout
and the shuffle order of a resumed run came from fresh RNG states, and it drifted)."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

KEY = "resume_state"


def rng_states() -> dict[str, Any]:
    """The global RNG states of torch (CPU, every CUDA device), numpy and Python, as tensors and
    plain values only, so the checkpoint loads with `weights_only=True`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned (CUDA only when the device count matches)."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class ResumeState(L.Callback):
    """Stores the RNG states and the data position (epoch, batches done) in the checkpoint; on
    resume restores the RNG states when training starts and tells the datamodule where the epoch
    stood (`ImageDataModule.resume_at`), so the remaining batches come in the same order.

    Exact on one process (CPU or one GPU) when nothing draws from the global RNGs outside the
    training step: true for the default data (no random flips). Not reproduced: random flips of
    the batches fetched ahead of the interruption point, and under DDP the position inside an
    interrupted epoch (the epoch's order is the same, it restarts from its first batch).
    """

    def __init__(self) -> None:
        super().__init__()
        self._to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[KEY] = {
            "rng": rng_states(),
            "epoch": trainer.current_epoch,
            "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            "batches_per_epoch": trainer.num_training_batches,
            "sampler_seed": getattr(trainer.datamodule, "sampler_seed", None),
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get(KEY)
        if state is None:  # a checkpoint from before this callback: resume as Lightning does
            return
        self._to_restore = state["rng"]
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= state["batches_per_epoch"]:  # saved at the end of an epoch
            epoch, done = epoch + 1, 0
        resume_at = getattr(trainer.datamodule, "resume_at", None)
        if resume_at is not None:
            resume_at(epoch, done, state.get("sampler_seed"))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not when loading: sanity checks and data set-up between the two must not shift
        # the streams the training steps draw from.
        if self._to_restore is not None:
            set_rng_states(self._to_restore)
            self._to_restore = None
