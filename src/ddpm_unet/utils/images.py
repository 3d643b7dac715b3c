"""Image grids: images in [-1, 1] -> one grid -> 8-bit pixels, the one form shared by the PNG
file, W&B and TensorBoard, so the three show the same pixels (W&B reads float arrays as 0-255
values, so a [0, 1] grid comes out black; TensorBoard scales floats by 255; uint8 means the same
to both)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ddpm_unet.utils.errors import UserError

GRID_PADDING = 2  # pixels between the images of a grid (white)


def images_to_grid(images: torch.Tensor, nrow: int, upscale: int = 1) -> torch.Tensor:
    """`[N, C, H, W]` in [-1, 1] -> one `[3 or C, H', W']` grid in [0, 1] (1 channel gives 3:
    `make_grid` repeats it), `nrow` images per row, `GRID_PADDING` white pixels around each,
    `upscale`d (nearest) so that tiny images (8x8 digits) are readable without zooming."""
    if images.dim() != 4:
        raise ValueError(f"images has shape {tuple(images.shape)}; expected [N, C, H, W].")
    if nrow < 1 or upscale < 1:
        raise UserError(f"nrow={nrow} and upscale={upscale} must both be whole numbers >= 1.")
    images = (images.float().clamp(-1, 1) + 1) / 2
    if upscale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=upscale, mode="nearest")
    return make_grid(images.cpu(), nrow=nrow, padding=GRID_PADDING, pad_value=1.0)


def grid_to_uint8(grid: torch.Tensor) -> np.ndarray:
    """`[C, H, W]` floats in [0, 1] -> `[H, W, C]` uint8 (`[H, W]` for C == 1), rounded as
    torchvision's `save_image` (`x * 255 + 0.5`, truncated): either way, the same pixels."""
    if grid.dim() != 3:
        raise ValueError(f"grid has shape {tuple(grid.shape)}; expected [C, H, W].")
    pixels = grid.detach().float().cpu().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def save_png(pixels: np.ndarray, path: str | Path) -> Path:
    """Write `[H, W, C]` or `[H, W]` uint8 `pixels` to `path` as a PNG (lossless); return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return path
