"""Sample a grid of images from the EMA weights during training and at its end."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ddpm_unet.generation.core import sample_model
from ddpm_unet.generation.guidance import check_guidance_scale
from ddpm_unet.models.samplers import DDIM, Sampler, sampler_or_default
from ddpm_unet.utils.errors import check_whole_numbers
from ddpm_unet.utils.images import grid_to_uint8, images_to_grid, save_png


class SampleGrid(L.Callback):
    """Every `every_n_epochs` epochs (and after the last one), sample `num_samples` images with
    `sampler` (None: DDIM, 100 steps) into `<output_dir>/epoch_<e>_step_<s>.png` (`final.png` at
    the end) and every logger that takes images (W&B, TensorBoard). Only rank zero samples; it
    runs no collective operation, so the other ranks are not blocked by it.

    A class-conditional model (`pl_module.num_classes`) shows one row per class: row r holds
    class `r % num_classes`, sampled with `guidance_scale` (None: 1, plain conditional).
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
        guidance_scale: float | None = None,
    ) -> None:
        super().__init__()
        check_whole_numbers(every_n_epochs=every_n_epochs, num_samples=num_samples)
        if guidance_scale is not None:  # whether the model is conditional is known at fit
            check_guidance_scale(guidance_scale, num_classes=1)
        self.output_dir = Path(output_dir)
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.sampler = sampler_or_default(sampler, DDIM(steps=100))
        self.seed = seed
        self.nrow = nrow or max(1, int(num_samples**0.5))
        self.upscale = upscale
        self.at_train_end = at_train_end
        self.guidance_scale = guidance_scale
        self._last_sampled_step = -1
        self.last_grid_path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_guidance_scale(self.guidance_scale, getattr(pl_module, "num_classes", None))

    def labels(self, num_classes: int | None) -> np.ndarray | None:
        """Image i's class: its row's (`(i // nrow) % num_classes`); None when unconditional."""
        if num_classes is None:
            return None
        return (np.arange(self.num_samples) // self.nrow) % num_classes

    def sample(self, pl_module: L.LightningModule) -> torch.Tensor:
        """The grid's images, `[num_samples, C, H, W]` in [-1, 1]."""
        num_classes = getattr(pl_module, "num_classes", None)
        return sample_model(
            pl_module,
            self.num_samples,
            self.sampler,
            self.seed,
            labels=self.labels(num_classes),
            guidance_scale=check_guidance_scale(self.guidance_scale, num_classes),
        )

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
        images = self.sample(pl_module)
        # One conversion to 8-bit pixels: the PNG and every logger show the same values.
        pixels = grid_to_uint8(images_to_grid(images, self.nrow, self.upscale))
        filename = f"{name}_step_{trainer.global_step:07d}.png" if name != "final" else "final.png"
        self.last_grid_path = save_png(pixels, self.output_dir / filename)
        self._last_sampled_step = trainer.global_step
        log_grid(trainer.loggers, "samples", pixels, trainer.global_step, caption=name)


def log_grid(
    loggers: list[Logger], key: str, pixels: np.ndarray, step: int, caption: str = ""
) -> None:
    """Send one uint8 grid (`[H, W, C]` or `[H, W]`) to every logger that takes images (W&B,
    TensorBoard; CSV is skipped)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [pixels], step=step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            layout = "HWC" if pixels.ndim == 3 else "HW"
            logger.experiment.add_image(key, pixels, global_step=step, dataformats=layout)
