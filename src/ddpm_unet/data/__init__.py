"""Image datasets for DDPM training and the LightningDataModule that serves them."""

from ddpm_unet.data.datamodule import ImageDataModule

__all__ = ["ImageDataModule"]  # the `_target_` of configs/data/*.yaml
