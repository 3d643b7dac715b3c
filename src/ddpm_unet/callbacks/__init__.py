"""Training callbacks: sample grids, throughput (FID is in `ddpm_unet.callbacks.fid`)."""

from ddpm_unet.callbacks.sample_grid import SampleGrid, images_to_grid
from ddpm_unet.callbacks.throughput import ImagesPerSecond

__all__ = ["ImagesPerSecond", "SampleGrid", "images_to_grid"]
