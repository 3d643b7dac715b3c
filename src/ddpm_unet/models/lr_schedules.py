"""Learning-rate schedules, named under `scheduler:` in `configs/model/*.yaml` as `_partial_`
objects. `LitDiffusion.configure_optimizers` calls one with the optimiser and the run's length in
optimiser steps (`trainer.estimated_stepping_batches`, known only once the trainer has the data).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.rules import FRACTION, NON_NEGATIVE_INT, Choice, Rule, check_arguments

log = logging.getLogger(__name__)


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


WARMUP_COSINE_RULES = (
    Rule("warmup_steps", NON_NEGATIVE_INT, "5000"),
    Choice("decay", ("none", "cosine")),  # none: DDPM's constant rate
    Rule("min_lr_ratio", FRACTION, "0.1"),
)


def check_warmup_cosine(warmup_steps: int, decay: str, min_lr_ratio: float) -> None:
    """Raise `UserError` for settings `warmup_cosine` cannot use (also called by the early
    config check)."""
    check_arguments(locals(), WARMUP_COSINE_RULES, prefix="model.scheduler.")


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: float,
    warmup_steps: int = 0,
    decay: Literal["none", "cosine"] = "none",
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
