"""Training callbacks, the `_target_`s of configs/callbacks/ (the checkpoint ones live in
`ddpm_unet.utils.checkpoint`, FID in `ddpm_unet.callbacks.fid`)."""

from ddpm_unet.callbacks.divergence import NonFiniteLossGuard, TrainingDivergedError
from ddpm_unet.callbacks.resume_state import ResumeState
from ddpm_unet.callbacks.sample_grid import SampleGrid
from ddpm_unet.callbacks.throughput import ImagesPerSecond
from ddpm_unet.utils.checkpoint import (
    AtomicCheckpointIO,
    CheckpointSaveError,
    InterruptCheckpoint,
    LastStateCheckpoint,
)

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointSaveError",
    "ImagesPerSecond",
    "InterruptCheckpoint",
    "LastStateCheckpoint",
    "NonFiniteLossGuard",
    "ResumeState",
    "SampleGrid",
    "TrainingDivergedError",
]
