"""Image datasets for DDPM training and the LightningDataModule that serves them."""

from ddpm_unet.data.datamodule import ImageDataModule, per_device_batch_size
from ddpm_unet.data.datasets import (
    DATASET_NAMES,
    DatasetDownloadError,
    DatasetNotFoundError,
    DigitsDataset,
    ImageDataset,
    PrecomputedImages,
    build_transform,
    ensure_torchvision_dataset,
    load_torchvision_split,
    random_split_indices,
)
from ddpm_unet.data.folder import (
    IMAGE_EXTENSIONS,
    CorruptImagesError,
    ImageFolderDataset,
    find_image_files,
)

__all__ = [
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "CorruptImagesError",
    "DatasetDownloadError",
    "DatasetNotFoundError",
    "DigitsDataset",
    "ImageDataModule",
    "ImageDataset",
    "PrecomputedImages",
    "ImageFolderDataset",
    "build_transform",
    "ensure_torchvision_dataset",
    "find_image_files",
    "load_torchvision_split",
    "per_device_batch_size",
    "random_split_indices",
]
