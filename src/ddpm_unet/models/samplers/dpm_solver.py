"""DPM-Solver++(2M) (Lu et al. 2022): a multistep second-order solver of the diffusion ODE in
data prediction (the model's `x0`), reaching in 10-20 model calls what DDPM needs 1000 for."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ddpm_unet.models.samplers.base import Chain, SpacedSampler, Spacing


@dataclass
class DPMSolver(SpacedSampler):
    """DPM-Solver++(2M) over `steps` steps, as diffusers' `DPMSolverMultistepScheduler` with
    `algorithm_type="dpmsolver++"`, `solver_order=2`, `solver_type="midpoint"`,
    `final_sigmas_type="zero"` and `lower_order_final=True`.

    With `alpha_t = sqrt(alpha_bar_t)`, `sigma_t = sqrt(1 - alpha_bar_t)`,
    `lambda_t = log(alpha_t / sigma_t)` and `h = lambda_t - lambda_s` from step `s` to `t`:

    * first order (the first step, and the last, which goes to the clean data `sigma = 0`):
      `x_t = sigma_t / sigma_s x_s - alpha_t (exp(-h) - 1) x0_s`;
    * second order (all other steps), with the previous step's `x0_r` and `r = h_prev / h`:
      `D1 = (x0_s - x0_r) / r`,
      `x_t = sigma_t / sigma_s x_s - alpha_t (exp(-h) - 1) (x0_s + D1 / 2)`.

    `x0` comes from `GaussianDiffusion.split_prediction` (clipped to [-1, 1] with `clip_x0`:
    diffusers' `thresholding=True, sample_max_value=1.0`). The default `spacing="trailing"`
    starts at the noisiest step `T - 1`.
    """

    name: ClassVar[str] = "dpm_solver"
    steps: int = 20
    spacing: Spacing = "trailing"

    def step(self, chain: Chain, i: int, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        diffusion = chain.diffusion
        s, t = chain.t(i), chain.t_next(i)
        x0, _ = diffusion.split_prediction(output, x, s)
        previous = chain.memory.get("previous")  # (lambda, x0) of the step before
        a_s = diffusion.alpha_bar_at(s)
        lambda_s = 0.5 * math.log(a_s / (1 - a_s))
        chain.memory["previous"] = (lambda_s, x0)
        if t < 0:
            # sigma_t = 0: the first-order update lands exactly on the predicted data.
            return x0
        a_t = diffusion.alpha_bar_at(t)
        alpha_t, sigma_t, sigma_s = math.sqrt(a_t), math.sqrt(1 - a_t), math.sqrt(1 - a_s)
        h = 0.5 * math.log(a_t / (1 - a_t)) - lambda_s
        phi = alpha_t * math.expm1(-h)  # alpha_t (exp(-h) - 1), without cancellation
        if previous is None:
            return (sigma_t / sigma_s) * x - phi * x0
        lambda_r, x0_r = previous
        r = (lambda_s - lambda_r) / h
        # x0_s + D1 / 2 with D1 = (x0_s - x0_r) / r, as one combination of the two predictions.
        c_s, c_r = 1 + 0.5 / r, -0.5 / r
        return (sigma_t / sigma_s) * x - phi * (c_s * x0 + c_r * x0_r)
