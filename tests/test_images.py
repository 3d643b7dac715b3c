"""Sample grids keep their pixels: the PNG file, W&B and TensorBoard show the same known images."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_unet.callbacks.sample_grid import SampleGrid
from ddpm_unet.utils.images import GRID_PADDING, grid_to_uint8, images_to_grid
from tests.wandb_records import history, read_finished_records

SIZE, UPSCALE, NROW = 4, 2, 2
CELL = SIZE * UPSCALE  # side of one image in the grid


def known_images() -> torch.Tensor:
    """`[4, 1, 4, 4]` in [-1, 1]: white, black, mid-grey, and black with a white top-left pixel."""
    images = torch.full((4, 1, SIZE, SIZE), -1.0)
    images[0] = 1.0
    images[2] = 0.0
    images[3, 0, 0, 0] = 1.0
    return images


def cell(pixels: np.ndarray, index: int) -> np.ndarray:
    """The pixels of image `index` in a grid of `NROW` columns (without the padding)."""
    row, col = divmod(index, NROW)
    top = GRID_PADDING + row * (CELL + GRID_PADDING)
    left = GRID_PADDING + col * (CELL + GRID_PADDING)
    return pixels[top : top + CELL, left : left + CELL]


def check_known_grid(pixels: np.ndarray) -> None:
    """`pixels` (`[H, W, 3]` uint8) is the grid of `known_images()`, within one grey level."""
    side = GRID_PADDING + NROW * (CELL + GRID_PADDING)
    assert pixels.shape == (side, side, 3), pixels.shape
    assert pixels.dtype == np.uint8
    assert (cell(pixels, 0) == 255).all()  # white stays white (not 1 of 255)
    assert (cell(pixels, 1) == 0).all()
    assert (np.abs(cell(pixels, 2).astype(int) - 128) <= 1).all()  # 0.0 -> half grey
    # the single white pixel of image 3, upscaled 2x (nearest), at its top-left corner
    corner = cell(pixels, 3)
    assert (corner[:UPSCALE, :UPSCALE] == 255).all()
    assert (corner[UPSCALE:, :] == 0).all() and (corner[:, UPSCALE:] == 0).all()
    assert (pixels[:GRID_PADDING] == 255).all()  # the white padding between images


def test_known_images_make_the_expected_grid() -> None:
    grid = images_to_grid(known_images(), nrow=NROW, upscale=UPSCALE)
    assert grid.shape[0] == 3 and grid.min() >= 0.0 and grid.max() <= 1.0
    check_known_grid(grid_to_uint8(grid))


def test_grid_helpers_reject_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"images has shape \(1, 4, 4\); expected \[N, C, H, W\]"):
        images_to_grid(torch.zeros(1, 4, 4), nrow=2)
    with pytest.raises(ValueError, match="nrow=0"):
        images_to_grid(torch.zeros(1, 1, 4, 4), nrow=0)
    with pytest.raises(ValueError, match=r"grid has shape \(4, 4\)"):
        grid_to_uint8(torch.zeros(4, 4))


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.slow
def test_sample_grid_pixels_round_trip_through_png_wandb_and_tensorboard(tmp_path: Path) -> None:
    """The callback's grid of known images, read back from each place it went to."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="test-images")
    tb_logger = TensorBoardLogger(save_dir=str(tmp_path / "tb"), name=None)
    callback = SampleGrid(
        output_dir=str(tmp_path / "samples"), num_samples=4, nrow=NROW, upscale=UPSCALE
    )
    # Stand-ins for what `_sample` reads: the step, the loggers, and the model's samples.
    trainer = SimpleNamespace(global_step=7, loggers=[wandb_logger, tb_logger])
    callback.sample = lambda module: known_images()  # type: ignore[method-assign]
    callback._sample(trainer, SimpleNamespace(), "epoch_0000")
    run_dir = Path(wandb_logger.experiment.dir).parent
    wandb_logger.experiment.finish()
    tb_logger.experiment.flush()

    # the PNG file
    with Image.open(tmp_path / "samples" / "epoch_0000_step_0000007.png") as img:
        check_known_grid(np.asarray(img.convert("RGB")))

    # W&B: the history row names the media file under the run's files/
    (run_file,) = run_dir.glob("run-*.wandb")
    rows = [r for r in history(read_finished_records(run_file)) if "samples/filenames" in r]
    assert len(rows) == 1 and rows[0]["trainer/global_step"] == 7
    media = run_dir / "files" / rows[0]["samples/filenames"][0]
    check_known_grid(_decode_png(media.read_bytes()))

    # TensorBoard: the encoded image in the event file
    events = EventAccumulator(str(tb_logger.log_dir), size_guidance={"images": 0})
    events.Reload()
    (image_event,) = events.Images("samples")
    assert image_event.step == 7
    check_known_grid(_decode_png(image_event.encoded_image_string))
