"""Training callbacks (the `_target_`s of configs/callbacks/): sample grids, throughput, and what
keeps a run's files right (checkpoints of the newest finite state, atomic saves, exact resume,
signals, divergence). FID is in `ddpm_unet.callbacks.fid`."""

from ddpm_unet.callbacks.checkpoint_io import AtomicCheckpointIO, CheckpointSaveError
from ddpm_unet.callbacks.checkpoints import InterruptCheckpoint, LastStateCheckpoint
from ddpm_unet.callbacks.divergence import NonFiniteLossGuard, TrainingDivergedError
from ddpm_unet.callbacks.resume_state import ResumeState
from ddpm_unet.callbacks.sample_grid import SampleGrid
from ddpm_unet.callbacks.signals import TrainingInterrupted
from ddpm_unet.callbacks.throughput import ImagesPerSecond

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
    "TrainingInterrupted",
]
