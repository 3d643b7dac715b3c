"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) over all `T` steps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ddpm_unet.models.samplers.base import Chain, StepSampler


@dataclass
class DDPM(StepSampler):
    """All `T` steps, `x_t -> x_{t-1}`: the posterior mean of `q(x_{t-1} | x_t, x0)` at the
    predicted `x0` (clipped with the process's `clip_x0`, as in the original DDPM code), plus
    noise of variance `beta_t` or the posterior's (the process's `variance`); none at `t = 0`.

    Without clipping and for an eps-model this equals Algorithm 2's
    `(x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z`.
    """

    name: ClassVar[str] = "ddpm"

    def timesteps(self, num_timesteps: int) -> list[int]:
        return list(range(num_timesteps - 1, -1, -1))

    def step(self, chain: Chain, i: int, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        diffusion, t = chain.diffusion, chain.t(i)
        x0, _ = diffusion.split_prediction(output, x, t)
        # float64 coefficients of the posterior mean (eq. 7 of Ho et al.), cast once.
        beta = float(diffusion.betas64[t])
        a, a_prev = diffusion.alpha_bar_at(t), diffusion.alpha_bar_at(t - 1)
        coef_x0 = beta * math.sqrt(a_prev) / (1 - a)
        coef_xt = (1 - a_prev) * math.sqrt(1 - beta) / (1 - a)
        mean = coef_x0 * x0 + coef_xt * x
        if t == 0:
            return mean
        var = beta if diffusion.variance == "beta" else beta * (1 - a_prev) / (1 - a)
        return mean + math.sqrt(var) * chain.noise_like(x)
