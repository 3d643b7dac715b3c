"""Stop at the first non-finite training loss, before it reaches the weights."""

from __future__ import annotations

import lightning as L
import torch

from ddpm_unet.utils.errors import UserError


class TrainingDivergedError(UserError):
    """The training loss became NaN/inf. A `UserError`: the fix is a setting (learning rate,
    clipping, precision), and the command line shows the message, not a traceback."""


class NonFiniteLossGuard(L.Callback):
    """Raise `TrainingDivergedError` when the training loss is NaN/inf.

    Checked in `on_before_backward`, i.e. before the bad loss produces gradients and an optimiser
    step, so the weights, the EMA and every checkpoint keep the last finite state. Lightning's
    `EarlyStopping(check_finite=True)` only looks at validation metrics, many steps later. Under
    DDP the ranks agree on the decision (one all-reduce of a flag), so none is left waiting.
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise TrainingDivergedError(
            f"the training loss is {loss.item()} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}): training diverged and was stopped before the weights "
            f"changed. Try a lower learning rate (the optimizer's lr={lr:g} now), gradient "
            f"clipping (the Trainer's gradient_clip_val=1.0, now {trainer.gradient_clip_val}), a "
            f"longer warm-up (the lr schedule's warmup_steps), or full precision (the Trainer's "
            f"precision=32-true, now {trainer.precision}). The checkpoints in the run folder hold "
            "finite weights only."
        )
