"""DPM-Solver++(2M) (Lu et al. 2022): a multistep second-order solver of the diffusion ODE in
data prediction (the model's `x0`), and with `eta > 0` of the diffusion SDE ("DPM++ 2M SDE"),
which reaches DDPM-1000's quality in 8 model calls (benchmarks/results/sampler_quality.md)."""

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
class DPMSolver(TimelineSampler):
    """DPM-Solver++(2M) over `steps` noise levels (`sigmas`: `trailing` by default, from the
    noisiest step T - 1; `karras` is "DPM++ 2M Karras"), as diffusers'
    `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`, `solver_order=2`,
    `solver_type="midpoint"`, `final_sigmas_type="zero"` and `lower_order_final=True`
    (k-diffusion's `sample_dpmpp_2m`). One model call per step.

    With `lambda = -log sigma`, `h = lambda_{i+1} - lambda_i` and `g = exp(-(1 + eta) h)`, on `x~`:

    * first order (the first step, and the last, which lands on the predicted `x0`):
      `x~_{i+1} = sigma_{i+1} / sigma_i exp(-eta h) x~_i + (1 - g) x0_i`;
    * second order (the others), with the previous prediction and `r = h_{i-1} / h`: the same
      with `x0_i` replaced by `(1 + 1 / 2r) x0_i - x0_{i-1} / 2r`;
    * then, with `eta > 0`, fresh noise `sigma_{i+1} sqrt(1 - exp(-2 eta h)) z` (none at the last).

    `eta = 0` is the ODE solver (DPM-Solver++(2M)); `eta = 1` the SDE solver, diffusers'
    `algorithm_type="sde-dpmsolver++"` (k-diffusion's `sample_dpmpp_2m_sde`, whose `eta` this is).

    `clip_x0`: diffusers' `thresholding=True, sample_max_value=1.0`. On `karras` sigmas diffusers
    rounds the network's t to an integer (keeping the exact sigma); we pass the interpolated t,
    which matches the noise level the solver assumes (k-diffusion's choice).
    """

    name: ClassVar[str] = "dpm_solver"
    steps: int = 20
    sigmas: SigmaSpacing = "trailing"
    rho: float = 7.0
    eta: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.eta, bool) or not isinstance(self.eta, int | float) or self.eta < 0:
            raise UserError(f"eta={self.eta!r} must be a number >= 0 (0: the ODE), e.g. eta=1.0.")

    def solve(
        self,
        model_x0: Callable[..., torch.Tensor],
        timeline: Timeline,
        x: torch.Tensor,
        chain: Chain,
        steps: Callable[[Iterable[int]], Iterable[int]],
    ) -> torch.Tensor:
        s = timeline.sigmas.tolist()
        previous = None  # x0 of the step before
        for i in steps(range(self.steps)):
            x0 = model_x0(x, s[i], timeline.t[i])
            if s[i + 1] == 0:  # first order to sigma 0: exactly the predicted data
                x = x0
            else:
                h = math.log(s[i] / s[i + 1])
                weight = -math.expm1(-(1 + self.eta) * h)  # 1 - g, without cancellation
                x = (s[i + 1] / s[i]) * math.exp(-self.eta * h) * x
                if previous is None:
                    x = x + weight * x0
                else:
                    r = math.log(s[i - 1] / s[i]) / h
                    x = x + weight * ((1 + 0.5 / r) * x0 - (0.5 / r) * previous)
                if self.eta > 0:
                    noise_std = s[i + 1] * math.sqrt(-math.expm1(-2 * self.eta * h))
                    x = x + noise_std * chain.noise_like(x)
            previous = x0
        return x


@dataclass
class DPMSolverSDE(DPMSolver):
    """DPM-Solver++(2M) SDE ("DPM++ 2M SDE"): `DPMSolver` with `eta = 1` by default, the
    diffusion SDE. Stochastic; one model call per step."""

    name: ClassVar[str] = "dpm_solver_sde"
    eta: float = 1.0
