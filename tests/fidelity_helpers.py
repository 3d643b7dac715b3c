"""Helpers shared by the FID test modules: random Inception weights and uint8 image sets made
independently of the package's own adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from ddpm_unet.metrics.inception import INCEPTION_WEIGHTS_FILENAME, make_random_inception_weights


def random_weights_file(factory: pytest.TempPathFactory) -> Path:
    """The session's random InceptionV3 weights (made once; shared by the FID test modules)."""
    path = factory.getbasetemp() / "inception" / INCEPTION_WEIGHTS_FILENAME
    if not path.is_file():
        make_random_inception_weights(path, seed=0)
    return path


class RGBUInt8(Dataset):
    """uint8 `[N, C, H, W]` -> items `[3, H, W]`, written here so the reference computations do
    not go through the package's adapters."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].contiguous()


def uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8, independently of `ddpm_unet.metrics.fidelity.to_uint8`."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
