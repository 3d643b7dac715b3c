"""Samplers of the reverse process, one class per file, built from `configs/sampler/*.yaml`."""

from ddpm_unet.models.samplers.base import (
    Chain,
    ImageGenerators,
    Sampler,
    build_sampler,
    sampler_or_default,
    spaced_timesteps,
)
from ddpm_unet.models.samplers.ddim import DDIM
from ddpm_unet.models.samplers.ddpm import DDPM
from ddpm_unet.models.samplers.dpm_solver import DPMSolver

__all__ = [
    "DDIM",
    "DDPM",
    "Chain",
    "DPMSolver",
    "ImageGenerators",
    "Sampler",
    "build_sampler",
    "sampler_or_default",
    "spaced_timesteps",
]
