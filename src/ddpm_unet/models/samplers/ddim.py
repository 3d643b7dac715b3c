"""DDIM sampling (Song et al. 2021): a subset of the steps, deterministic with `eta = 0`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ddpm_unet.models.samplers.base import Chain, SpacedSampler, Spacing
from ddpm_unet.utils.errors import UserError


@dataclass
class DDIM(SpacedSampler):
    """`steps` steps (`spacing`, see `spaced_timesteps`), `x_t -> x_s` by eq. 12 of Song et al.:

    `x_s = sqrt(a_s) x0 + sqrt(1 - a_s - sigma^2) eps + sigma z`, with
    `sigma = eta * sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))`; `eta = 0` is deterministic,
    `eta = 1` has DDPM's posterior variance. After the last visited step `a_s = 1` (the clean
    data), so the chain ends on the predicted `x0`.

    The coefficients are float64: in float32, `1 - a_s - sigma^2` cancels to 0 at the first
    step of a 10-step cosine chain with `eta = 1` (true value 2.8e-4).
    """

    name: ClassVar[str] = "ddim"
    steps: int = 50
    eta: float = 0.0
    spacing: Spacing = "linspace"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.eta, bool) or not isinstance(self.eta, int | float) or self.eta < 0:
            raise UserError(
                f"eta={self.eta!r} must be a number >= 0 (0: deterministic, 1: DDPM-like "
                f"noise), e.g. eta=0.0."
            )

    def step(self, chain: Chain, i: int, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        diffusion, t = chain.diffusion, chain.t(i)
        x0, eps = diffusion.split_prediction(output, x, t)
        a_t, a_s = diffusion.alpha_bar_at(t), diffusion.alpha_bar_at(chain.t_next(i))
        sigma = self.eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        direction = math.sqrt(max(0.0, 1 - a_s - sigma**2))
        x_s = math.sqrt(a_s) * x0 + direction * eps
        if sigma > 0:
            x_s = x_s + sigma * chain.noise_like(x)
        return x_s
