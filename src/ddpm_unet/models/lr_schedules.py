"""Learning-rate schedules, built by the config as `_partial_` objects.

`configs/model/*.yaml` names one under `scheduler:`; `LitDiffusion.configure_optimizers` calls
it with the optimiser and the run's length in optimiser steps (Lightning's
`trainer.estimated_stepping_batches`, known only once the trainer holds the data):

    scheduler:
      _target_: ddpm_unet.models.lr_schedules.warmup_cosine
      _partial_: true
      warmup_steps: 5000
      decay: none
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

Decay = Literal["none", "cosine"]
DECAYS: tuple[str, ...] = ("none", "cosine")


class LRFactor:
    """`LambdaLR` multiplier after `step` optimiser steps: linear warm-up over `warmup` steps,
    then 1, or, with `total`, a half cosine from 1 down to `min_ratio` at step `total`.

    A class, not a closure, so the module pickles (`ddp_spawn`)."""

    def __init__(self, warmup: int, total: int | None = None, min_ratio: float = 0.0) -> None:
        self.warmup = warmup
        self.total = total
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def check_warmup_cosine(warmup_steps: int, decay: str, min_lr_ratio: float) -> None:
    """Raise `UserError` for settings `warmup_cosine` cannot use (also called by the early
    config check, with the same messages)."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise UserError(
            f"model.scheduler.warmup_steps={warmup_steps!r} must be a whole number >= 0, "
            "e.g. model.scheduler.warmup_steps=5000."
        )
    if decay not in DECAYS:
        raise UserError(
            f"model.scheduler.decay={decay!r} is unknown: use one of none (DDPM), cosine."
        )
    is_number = isinstance(min_lr_ratio, int | float) and not isinstance(min_lr_ratio, bool)
    if not is_number or not 0.0 <= min_lr_ratio <= 1.0:
        raise UserError(
            f"model.scheduler.min_lr_ratio={min_lr_ratio!r} is out of range: give a number from "
            "0 to 1, e.g. model.scheduler.min_lr_ratio=0.1."
        )


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: float,
    warmup_steps: int = 0,
    decay: Decay = "none",
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up from 0 over `warmup_steps`, then a constant rate (`decay="none"`, DDPM) or
    a half cosine down to `min_lr_ratio * lr` at step `total_steps` (`decay="cosine"`).

    Stepped once per optimiser step (`interval: step`). `total_steps` may be infinite (no
    `max_steps`/`max_epochs`) only without decay.
    """
    check_warmup_cosine(warmup_steps, decay, min_lr_ratio)
    if decay == "none":
        return LambdaLR(optimizer, LRFactor(warmup_steps))
    if not math.isfinite(total_steps):
        raise UserError(
            "model.scheduler.decay=cosine needs a known run length: set trainer.max_steps or "
            "trainer.max_epochs, or use model.scheduler.decay=none."
        )
    if total_steps <= warmup_steps:
        # A debug run (debug=fdr, debug=limit) of the default recipe: it ends inside the warm-up,
        # so there is nothing to decay; say so rather than refuse the run.
        log.warning(
            "model.scheduler.decay=cosine: the run has only %d optimiser steps, within "
            "model.scheduler.warmup_steps=%d, so the learning rate only warms up.",
            total_steps,
            warmup_steps,
        )
        return LambdaLR(optimizer, LRFactor(warmup_steps))
    return LambdaLR(optimizer, LRFactor(warmup_steps, int(total_steps), min_lr_ratio))
