"""The noise-level timeline shared by Euler, Euler-ancestral, Heun, UniPC and DPM-Solver++.

A discrete-time process is read as Karras et al.'s (2022) `x~ = x0 + sigma eps` with
`sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)` and `x~ = x_t / sqrt(alpha_bar_t)
= x_t sqrt(1 + sigma^2)`. The solvers work on `x~` (k-diffusion's convention; diffusers'
Euler family too, diffusers' multistep solvers on `x_t`, which is the same update scaled) and
return to `x_t` at `sigma = 0`, where the two coincide.

* **The grid** (`sigmas`): `steps` noise levels, descending, then 0:
  `karras` (Karras et al. eq. 5, `rho`, from sigma_max = sigma_{T-1} to sigma_min = sigma_0),
  `exponential` (uniform in log sigma over the same range), or `linspace` / `leading` /
  `trailing`: the integer steps of `spaced_timesteps` and their exact sigmas (diffusers' Euler
  family takes `linspace` unrounded, with sigma interpolated linearly in t; ours stays on the
  steps the network was trained at).
* **The network's t** for a noise level off the integer grid: linear interpolation of `t` in
  `log sigma` between the two neighbouring steps (k-diffusion's `DiscreteSchedule.sigma_to_t`
  and diffusers' `_sigma_to_t`; clamped to [0, T - 1]). On the integer spacings `t` is the step
  itself, passed as int64; otherwise as float32 (the UNet embeds any real `t`).
* **The denoiser** `denoise`: `x~` at `sigma` -> the network's `x0` (its output split by the
  process's target, eps / x0 / v, and clipped to [-1, 1] with the process's `clip_x0`), with
  float64 coefficients.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers.base import SPACINGS, Chain, Sampler, check_steps, spaced_timesteps
from ddpm_unet.utils.errors import UserError

SigmaSpacing = Literal["karras", "exponential", "linspace", "leading", "trailing"]
SIGMA_SPACINGS = ("karras", "exponential", *SPACINGS)


def model_sigmas(diffusion: GaussianDiffusion) -> np.ndarray:
    """`[T]` float64: `sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`, increasing in `t`."""
    alpha_bar = diffusion.alpha_bar64.numpy()
    return np.sqrt((1.0 - alpha_bar) / alpha_bar)


def sigma_to_t(sigma: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Network timesteps of noise levels `sigma` (float64): linear in `log sigma` between the
    neighbouring integer steps of `sigmas` (`model_sigmas`), clamped to [0, T - 1]."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    return np.interp(log_sigma, np.log(sigmas), np.arange(len(sigmas), dtype=np.float64))


@dataclass(frozen=True)
class Timeline:
    """The grid of one chain: `sigmas` `[n + 1]` float64 (descending, the last 0) and the
    network timesteps `t` `[n]` of `sigmas[:-1]`."""

    sigmas: np.ndarray
    t: np.ndarray
    table: np.ndarray  # model_sigmas, for noise levels off the grid (Heun's churn)

    @property
    def integer(self) -> bool:
        """Whether every `t` is an integer step (then passed to the network as int64)."""
        return bool(np.all(self.t == np.round(self.t)))


def make_timeline(
    diffusion: GaussianDiffusion, steps: int, spacing: SigmaSpacing, rho: float = 7.0
) -> Timeline:
    """`steps` noise levels of `diffusion` spaced by `spacing` (the module docstring), then 0."""
    table = model_sigmas(diffusion)
    if spacing in SPACINGS:
        t = np.asarray(spaced_timesteps(len(table), steps, spacing), dtype=np.float64)  # type: ignore[arg-type]
        sigmas = table[t.astype(np.int64)]
    else:
        sigma_min, sigma_max = float(table[0]), float(table[-1])
        ramp = np.linspace(0.0, 1.0, steps)
        if spacing == "karras":
            lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
            sigmas = (hi + ramp * (lo - hi)) ** rho
        else:  # exponential
            sigmas = np.exp(np.log(sigma_max) + ramp * (np.log(sigma_min) - np.log(sigma_max)))
        t = sigma_to_t(sigmas, table)
    return Timeline(np.append(sigmas, 0.0), t, table)


def denoise(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    sigma: float,
    t: float,
    integer: bool = False,
) -> torch.Tensor:
    """`x~` (`[N, C, H, W]`) at noise level `sigma` -> the network's `x0` (`[N, C, H, W]`).

    The network sees `x_t = x~ / sqrt(1 + sigma^2)` at timestep `t`; its output is split as
    `GaussianDiffusion.split_prediction` does, at `alpha_bar = 1 / (1 + sigma^2)` (which need not
    be on the integer grid), then clipped with `clip_x0`.
    """
    a = 1.0 / (1.0 + sigma * sigma)
    sqrt_a, sqrt_1ma = math.sqrt(a), sigma * math.sqrt(a)  # float64, cast once on the tensors
    x_t = x * sqrt_a
    dtype = torch.long if integer else torch.float32
    output = model(
        x_t, torch.full((x.shape[0],), round(t) if integer else t, dtype=dtype, device=x.device)
    ).float()
    if diffusion.prediction_type == "eps":
        x0 = (x_t - sqrt_1ma * output) / sqrt_a
    elif diffusion.prediction_type == "x0":
        x0 = output
    else:  # v
        x0 = sqrt_a * x_t - sqrt_1ma * output
    return x0.clamp(-1.0, 1.0) if diffusion.clip_x0 else x0


class TimelineSampler(Sampler):
    """A solver over `steps` noise levels spaced by `sigmas` (`rho`: Karras' exponent). The
    dataclass subclass declares `steps`, `sigmas` and `rho` with its defaults, and implements
    `solve`: the loop over the timeline in `x~`."""

    steps: int
    sigmas: SigmaSpacing
    rho: float

    def __post_init__(self) -> None:
        check_steps(self.steps)
        if self.sigmas not in SIGMA_SPACINGS:
            raise UserError(
                f"sigmas={self.sigmas!r} is unknown: use one of {', '.join(SIGMA_SPACINGS)}."
            )
        if isinstance(self.rho, bool) or not isinstance(self.rho, int | float) or self.rho <= 0:
            raise UserError(f"rho={self.rho!r} must be a number > 0, e.g. rho=7.0 (Karras et al.).")

    def num_model_calls(self, num_timesteps: int) -> int:
        """One per step."""
        return self.steps

    def run(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion,
        x: torch.Tensor,
        chain: Chain,
        steps: Callable[[Iterable[int]], Iterable[int]],
    ) -> torch.Tensor:
        timeline = make_timeline(diffusion, self.steps, self.sigmas, self.rho)
        chain.timesteps = timeline.t.tolist()
        integer = timeline.integer

        def model_x0(x_tilde: torch.Tensor, sigma: float, t: float | None = None) -> torch.Tensor:
            """The denoiser at `sigma`; `t` defaults to the interpolated timestep of `sigma`."""
            if t is None:
                t = float(sigma_to_t(np.asarray(sigma), timeline.table))
            return denoise(model, diffusion, x_tilde, sigma, t, integer and t == round(t))

        x_tilde = x * math.sqrt(1.0 + timeline.sigmas[0] ** 2)
        return self.solve(model_x0, timeline, x_tilde, chain, steps)

    @abstractmethod
    def solve(
        self,
        model_x0: Callable[..., torch.Tensor],
        timeline: Timeline,
        x: torch.Tensor,
        chain: Chain,
        steps: Callable[[Iterable[int]], Iterable[int]],
    ) -> torch.Tensor:
        """`x~` at `timeline.sigmas[0]` -> the sample at sigma 0. `model_x0(x, sigma, t)` is the
        denoiser (`t`: the grid's `timeline.t[i]`, or None to interpolate)."""
