"""Heun's 2nd-order method on the noise-level timeline (Karras et al. 2022, Algorithm 2, with
its optional stochastic "churn"; k-diffusion's `sample_heun`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ddpm_unet.models.samplers.base import Chain
from ddpm_unet.models.samplers.timeline import SigmaSpacing, Timeline, TimelineSampler
from ddpm_unet.utils.errors import UserError


@dataclass
class Heun(TimelineSampler):
    """EDM's sampler: at `sigma_i`, with `gamma = min(s_churn / steps, sqrt(2) - 1)` when
    `s_tmin <= sigma_i <= s_tmax` (else 0), raise the noise to `sigma_hat = sigma_i (1 + gamma)`
    by adding `N(0, s_noise^2 (sigma_hat^2 - sigma_i^2))`; then an Euler step to `sigma_{i+1}`
    and, unless `sigma_{i+1} = 0`, Heun's correction with the slope there (the average of the
    two slopes). Model calls: 2 per step except the last, `2 steps - 1` in all.

    `s_churn = 0` (the default) is deterministic and is diffusers' `HeunDiscreteScheduler`.
    With churn, `sigma_hat` is off the grid: the network's t is interpolated (`sigma_to_t`).
    """

    name: ClassVar[str] = "heun"
    steps: int = 10
    # Not `trailing`: from sigma_{T-1} (cosine: ~2e4) the correction multiplies the difference of
    # two slopes by ~sigma_{T-1}, and the samples are noise (benchmarks/results/sampler_quality.md).
    sigmas: SigmaSpacing = "leading"
    rho: float = 7.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UserError(f"{name}={value!r} must be a number >= 0.")
        if self.s_tmin > self.s_tmax:
            raise UserError(f"s_tmin={self.s_tmin} must be <= s_tmax={self.s_tmax}.")

    def num_model_calls(self, num_timesteps: int) -> int:
        """2 per step, except the last (an Euler step to sigma 0)."""
        return 2 * self.steps - 1

    def solve(
        self,
        model_x0: Callable[..., torch.Tensor],
        timeline: Timeline,
        x: torch.Tensor,
        chain: Chain,
        steps: Callable[[Iterable[int]], Iterable[int]],
    ) -> torch.Tensor:
        s = timeline.sigmas.tolist()
        for i in steps(range(self.steps)):
            churn = self.s_tmin <= s[i] <= self.s_tmax
            gamma = min(self.s_churn / self.steps, math.sqrt(2) - 1) if churn else 0.0
            sigma_hat = s[i] * (1 + gamma)
            if gamma > 0:
                noise = chain.noise_like(x) * self.s_noise
                x = x + math.sqrt(sigma_hat**2 - s[i] ** 2) * noise
                x0 = model_x0(x, sigma_hat, None)
            else:
                x0 = model_x0(x, s[i], timeline.t[i])
            d = (x - x0) / sigma_hat
            dt = s[i + 1] - sigma_hat
            if s[i + 1] == 0:
                x = x + dt * d
            else:
                x_2 = x + dt * d
                d_2 = (x_2 - model_x0(x_2, s[i + 1], timeline.t[i + 1])) / s[i + 1]
                x = x + dt * 0.5 * (d + d_2)
        return x
