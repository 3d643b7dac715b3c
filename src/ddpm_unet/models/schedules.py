"""Noise schedules: functions `(T, **kwargs) -> betas [T]` (float64), registered by name.

`make_betas` checks the keyword arguments against the schedule's signature, so a value meant for
another schedule (e.g. `beta_start` with `cosine`) is refused, not ignored. Adding a schedule:

    @register_schedule("my_schedule")
    def my_schedule(num_timesteps: int, k: float = 1.0) -> torch.Tensor: ...

and `GaussianDiffusion(schedule="my_schedule", schedule_kwargs={"k": 2.0})` uses it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from ddpm_unet.utils.errors import UserError

ScheduleFn = Callable[..., torch.Tensor]

SCHEDULES: dict[str, ScheduleFn] = {}


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    """Decorator: make `fn(num_timesteps, **kwargs) -> betas [T]` available as `name`."""

    def add(fn: ScheduleFn) -> ScheduleFn:
        SCHEDULES[name] = fn
        return fn

    return add


def _betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """`alpha_bar` at `t = 0..T` (`[T + 1]`, starting at 1) -> `betas [T]`, clipped at 0.999 so
    the last step stays finite when `alpha_bar` reaches 0."""
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


@register_schedule("linear")
def linear(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Evenly spaced betas from `beta_start` to `beta_end` (DDPM: 1e-4 to 0.02 over T=1000)."""
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise UserError(
            f"the linear schedule needs 0 < beta_start <= beta_end < 1, got beta_start="
            f"{beta_start}, beta_end={beta_end}: e.g. DDPM's 1e-4 and 0.02."
        )
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


@register_schedule("cosine")
def cosine(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """`alpha_bar(t) = cos^2((t / T + s) / (1 + s) * pi / 2)` (Nichol & Dhariwal 2021); the offset
    `s` keeps the first betas from being vanishingly small."""
    if not s > 0:
        raise UserError(f"s={s} must be > 0 (Nichol & Dhariwal use 0.008).")
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return _betas_from_alpha_bar(alpha_bar)


@register_schedule("sigmoid")
def sigmoid(
    num_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> torch.Tensor:
    """`alpha_bar(t)` follows a sigmoid over `[start, end]` with temperature `tau`, rescaled to
    run from 1 to 0 (Jabri et al. 2022, as in lucidrains' denoising-diffusion-pytorch); better
    than cosine for images larger than 64 px, according to that paper."""
    if not start < end:
        raise UserError(
            f"the sigmoid schedule needs start < end, got start={start}, end={end}: e.g. "
            "start=-3, end=3."
        )
    if not tau > 0:
        raise UserError(f"tau={tau} must be > 0, e.g. 1.0.")
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    v_start = torch.tensor(start / tau, dtype=torch.float64).sigmoid()
    v_end = torch.tensor(end / tau, dtype=torch.float64).sigmoid()
    alpha_bar = (-((t * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start)
    alpha_bar = alpha_bar / alpha_bar[0]
    return _betas_from_alpha_bar(alpha_bar).clamp(min=0.0)


def make_betas(name: str, num_timesteps: int, **kwargs: Any) -> torch.Tensor:
    """`betas [num_timesteps]` (float64) of the registered schedule `name`; `UserError` for an
    unknown name, a `num_timesteps` below 1, or a keyword argument the schedule does not take."""
    if name not in SCHEDULES:
        raise UserError(f"schedule={name!r} is unknown: use one of {', '.join(sorted(SCHEDULES))}.")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise UserError(f"num_timesteps={num_timesteps!r} must be a whole number >= 1, e.g. 1000.")
    takes = list(inspect.signature(SCHEDULES[name]).parameters)[1:]  # after num_timesteps
    for key in kwargs:
        if key not in takes:
            raise UserError(
                f"schedule_kwargs has {key}, but the {name} schedule does not use {key} (it "
                f"takes {', '.join(takes) or 'no arguments'}): remove it, or choose a schedule "
                "that uses it."
            )
    return SCHEDULES[name](num_timesteps, **kwargs).to(torch.float64)
