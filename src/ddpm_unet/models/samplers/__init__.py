"""Samplers of the reverse process, one class per file, built from `configs/sampler/*.yaml`.

Model calls per image (`Sampler.num_model_calls`): DDPM T; DDIM, DPM-Solver++ (and its SDE form),
UniPC, Euler and Euler-ancestral `steps`; Heun `2 steps - 1`.
"""

from ddpm_unet.models.samplers.base import (
    Chain,
    ImageGenerators,
    Sampler,
    SpacedSampler,
    StepSampler,
    sampler_or_default,
    spaced_timesteps,
)
from ddpm_unet.models.samplers.ddim import DDIM
from ddpm_unet.models.samplers.ddpm import DDPM
from ddpm_unet.models.samplers.dpm_solver import DPMSolver, DPMSolverSDE
from ddpm_unet.models.samplers.euler import Euler, EulerAncestral
from ddpm_unet.models.samplers.heun import Heun
from ddpm_unet.models.samplers.timeline import TimelineSampler, make_timeline, sigma_to_t
from ddpm_unet.models.samplers.unipc import UniPC

__all__ = [
    "DDIM",
    "DDPM",
    "Chain",
    "DPMSolver",
    "DPMSolverSDE",
    "Euler",
    "EulerAncestral",
    "Heun",
    "ImageGenerators",
    "Sampler",
    "SpacedSampler",
    "StepSampler",
    "TimelineSampler",
    "UniPC",
    "make_timeline",
    "sampler_or_default",
    "sigma_to_t",
    "spaced_timesteps",
]
