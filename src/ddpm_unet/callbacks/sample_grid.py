"""Sample a grid of images from the EMA weights during training and at its end."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from ddpm_unet.models.diffusion import SamplerName


def images_to_grid(images: torch.Tensor, nrow: int, upscale: int = 1) -> torch.Tensor:
    """`[N, C, H, W]` in [-1, 1] -> one `[3 or C, H', W']` grid in [0, 1], `upscale`d (nearest).

    Tiny images (8x8 digits) are upscaled so the PNG is readable without zooming.
    """
    images = (images.float().clamp(-1, 1) + 1) / 2
    if upscale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=upscale, mode="nearest")
    return make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=1.0)


class SampleGrid(L.Callback):
    """Every `every_n_epochs` epochs (and after the last one), sample `num_samples` images.

    The grid goes to `<output_dir>/epoch_<e>_step_<s>.png` (and `final.png` at the end) and, as an
    image, to every attached logger that takes images (W&B, TensorBoard). Only rank zero samples;
    sampling runs no collective operation, so the other ranks are not blocked by it.
    """

    def __init__(
        self,
        output_dir: str,
        every_n_epochs: int = 10,
        num_samples: int = 64,
        sampler: SamplerName = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        seed: int = 0,
        nrow: int | None = None,
        upscale: int = 1,
        at_train_end: bool = True,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} must be >= 1.")
        self.output_dir = Path(output_dir)
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.sampler = sampler
        self.steps = steps
        self.eta = eta
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
            if self.last_grid_path is not None:
                final = self.output_dir / "final.png"
                final.write_bytes(self.last_grid_path.read_bytes())
                self.last_grid_path = final
            return
        images = pl_module.sample_images(
            self.num_samples, self.sampler, self.steps, self.eta, seed=self.seed
        )
        grid = images_to_grid(images, self.nrow, self.upscale)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        filename = f"{name}_step_{trainer.global_step:07d}.png" if name != "final" else "final.png"
        path = self.output_dir / filename
        save_image(grid, path)
        self.last_grid_path = path
        self._last_sampled_step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples", [grid], step=trainer.global_step, caption=[name])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, global_step=trainer.global_step)
