"""Sample a grid of images from the EMA weights during training and at its end."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ddpm_unet.models.samplers import DDIM, Sampler, sampler_or_default
from ddpm_unet.utils.images import grid_to_uint8, images_to_grid, save_png
from ddpm_unet.utils.rules import POSITIVE_INT, Rule, check_arguments

# `SampleGrid`'s single-valued arguments (under `callbacks.sample_grid.` in the config).
SAMPLE_GRID_RULES = (
    Rule("every_n_epochs", POSITIVE_INT, "10"),
    Rule("num_samples", POSITIVE_INT, "64"),
)


class SampleGrid(L.Callback):
    """Every `every_n_epochs` epochs (and after the last one), sample `num_samples` images.

    `sampler`: a `Sampler` (built by Hydra from the nested `sampler:` block; DDIM with 100 steps
    when None). The grid goes to `<output_dir>/epoch_<e>_step_<s>.png` (`final.png` at the end)
    and to every logger that takes images (W&B, TensorBoard). Only rank zero samples; sampling
    runs no collective operation, so the other ranks are not blocked by it.
    """

    def __init__(
        self,
        output_dir: str,
        every_n_epochs: int = 10,
        num_samples: int = 64,
        sampler: Sampler | None = None,
        seed: int = 0,
        nrow: int | None = None,
        upscale: int = 1,
        at_train_end: bool = True,
    ) -> None:
        super().__init__()
        # Named as their `callbacks.sample_grid.` config keys; the early config check runs them.
        check_arguments(locals(), SAMPLE_GRID_RULES, prefix="callbacks.sample_grid.")
        self.output_dir = Path(output_dir)
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.sampler = sampler_or_default(sampler, DDIM(steps=100))
        self.seed = seed
        self.nrow = nrow or max(1, int(num_samples**0.5))
        self.upscale = upscale
        self.at_train_end = at_train_end
        self._last_sampled_step = -1
        self.last_grid_path: Path | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._sample(trainer, pl_module, f"epoch_{trainer.current_epoch:04d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_train_end:
            self._sample(trainer, pl_module, "final")

    @rank_zero_only
    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        if name == "final" and self._last_sampled_step == trainer.global_step:
            # The last epoch was just sampled: reuse its grid rather than sample again.
            assert self.last_grid_path is not None
            self.last_grid_path = shutil.copyfile(
                self.last_grid_path, self.output_dir / "final.png"
            )
            return
        images = pl_module.sample_images(self.num_samples, self.sampler, seed=self.seed)
        # One conversion to 8-bit pixels: the PNG and every logger show the same values.
        pixels = grid_to_uint8(images_to_grid(images, self.nrow, self.upscale))
        filename = f"{name}_step_{trainer.global_step:07d}.png" if name != "final" else "final.png"
        self.last_grid_path = save_png(pixels, self.output_dir / filename)
        self._last_sampled_step = trainer.global_step
        log_grid(trainer.loggers, "samples", pixels, trainer.global_step, caption=name)


def log_grid(
    loggers: list[Logger], key: str, pixels: np.ndarray, step: int, caption: str = ""
) -> None:
    """Send one uint8 grid (`[H, W, C]` or `[H, W]`, 0-255) to every logger that takes images
    (W&B, TensorBoard; CSV is skipped). Both read uint8 as 0-255 pixels (`utils/images.py`)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [pixels], step=step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            layout = "HWC" if pixels.ndim == 3 else "HW"
            logger.experiment.add_image(key, pixels, global_step=step, dataformats=layout)
