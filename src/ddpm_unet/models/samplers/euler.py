"""Euler and Euler-ancestral on the noise-level timeline (Karras et al. 2022, Algorithm 1 without
the 2nd-order correction; k-diffusion's `sample_euler` / `sample_euler_ancestral`)."""

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
class Euler(TimelineSampler):
    """Euler's method on the probability-flow ODE `dx~/dsigma = (x~ - x0(x~, sigma)) / sigma`:
    `x~_{i+1} = x~_i + (sigma_{i+1} - sigma_i) (x~_i - x0_i) / sigma_i`; one model call per step.
    As diffusers' `EulerDiscreteScheduler` (its `sample` is our `x~`). Deterministic."""

    name: ClassVar[str] = "euler"
    steps: int = 20
    sigmas: SigmaSpacing = "trailing"
    rho: float = 7.0

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
            x0 = model_x0(x, s[i], timeline.t[i])
            x = x + (s[i + 1] - s[i]) / s[i] * (x - x0)
        return x


@dataclass
class EulerAncestral(TimelineSampler):
    """Euler-ancestral (k-diffusion's `sample_euler_ancestral`): from `sigma_i` an Euler step
    down to `sigma_down`, then fresh noise of std `sigma_up`, with
    `sigma_up = min(sigma_{i+1}, eta sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2))`
    and `sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2)`. `eta = 1` is diffusers'
    `EulerAncestralDiscreteScheduler` (DDPM's posterior noise); `eta = 0` is `Euler`. One model
    call per step; no noise at the last (sigma_{n} = 0)."""

    name: ClassVar[str] = "euler_ancestral"
    steps: int = 20
    eta: float = 1.0
    sigmas: SigmaSpacing = "trailing"
    rho: float = 7.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.eta, bool) or not isinstance(self.eta, int | float) or self.eta < 0:
            raise UserError(f"eta={self.eta!r} must be a number >= 0 (0: Euler), e.g. eta=1.0.")

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
            x0 = model_x0(x, s[i], timeline.t[i])
            up = min(
                s[i + 1],
                self.eta * math.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2),
            )
            down = math.sqrt(s[i + 1] ** 2 - up**2)
            x = x + (down - s[i]) / s[i] * (x - x0)
            if up > 0:
                x = x + up * chain.noise_like(x)
        return x
