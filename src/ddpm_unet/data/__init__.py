"""Image datasets for DDPM training and the LightningDataModule that serves them."""

from ddpm_unet.data.datamodule import ImageDataModule, per_device_batch_size
from ddpm_unet.data.datasets import (
    DatasetDownloadError,
    DatasetNotFoundError,
    ImageDataset,
    PrecomputedImages,
    build_transform,
)
from ddpm_unet.data.folder import CorruptImagesError, ImageFolderDataset

__all__ = [
    "CorruptImagesError",
    "DatasetDownloadError",
    "DatasetNotFoundError",
    "ImageDataModule",
    "ImageDataset",
    "ImageFolderDataset",
    "PrecomputedImages",
    "build_transform",
    "per_device_batch_size",
]
