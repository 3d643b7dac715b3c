"""The sampler interface: the steps a sampler visits, one step, and the loop all samplers share.

A sampler is a small dataclass built from `configs/sampler/<name>.yaml` (`_target_`). It gets
`(x0, eps)` from the process (`GaussianDiffusion.split_prediction`, or `timeline.denoise` on the
noise-level timeline), so it works whatever the network's target, and computes its coefficients
as float64 Python numbers. It calls the network as `model(x, t)` only, `t` a `[N]` tensor (int64,
or float32 for fractional timesteps). Adding one is a file here and a config: subclass
`StepSampler` (one model call per visited integer step: implement `timesteps` and `step`) or
`timeline.TimelineSampler` (a solver on sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t):
implement `solve`), set `name`, keep what a multistep method needs between steps in
`chain.memory`, and draw any noise with `chain.noise_like(x)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.utils.errors import UserError

Spacing = Literal["linspace", "leading", "trailing"]
SPACINGS = ("linspace", "leading", "trailing")
Progress = bool | Callable[[Iterable[int]], Iterable[int]]


class ImageGenerators(tuple[torch.Generator, ...]):
    """One CPU `torch.Generator` per image of a batch: image `j`'s starting noise and every draw
    of its steps come from generator `j` (on the CPU, then moved), so they depend neither on the
    batch it is in nor on the device (`ddpm_unet.generation` seeds them from `(seed, index)`).
    torch refuses a generator on another device."""

    def randn(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        """Noise of `shape` (`[len(self), C, H, W]`) on `device`, row `j` from generator `j`."""
        if shape[0] != len(self):
            raise ValueError(f"{len(self)} generators for a batch of {shape[0]} images")
        return torch.stack([torch.randn(shape[1:], generator=g) for g in self]).to(device)


# One generator (on the model's device) for the whole batch, one CPU generator per image, or
# None (torch's global generator).
Noise = torch.Generator | ImageGenerators | None


def spaced_timesteps(num_timesteps: int, steps: int, spacing: Spacing) -> list[int]:
    """`steps` distinct steps of `[0, T)`, descending; the names are diffusers' `timestep_spacing`.

    * `linspace`: `round(linspace(T - 1, 0, steps))`, from `T - 1` down to 0 (DDIM's uniform
      skip, as diffusers' DDIMScheduler has it for `steps > 1`; the gaps may differ by one);
    * `leading`: `k * (T // steps)` for `k = steps - 1 .. 0`, from below `T - 1` down to 0;
    * `trailing`: `round(T - k * T / steps) - 1` for `k = 0 .. steps - 1`, from `T - 1` down to
      `T / steps - 1` (Lin et al. 2024: starts from the noisiest step; best for few steps).
    """
    T = num_timesteps
    if not 1 <= steps <= T:
        raise UserError(
            f"steps={steps} must be between 1 and num_timesteps={T} (the model's number of "
            f"diffusion steps) with spacing={spacing!r}: e.g. steps={min(50, T)}."
        )
    k = np.arange(steps, dtype=np.float64)  # not a float-step arange: it can give one too many
    if spacing == "linspace":
        values = np.linspace(T - 1, 0, steps, dtype=np.float64).round()
    elif spacing == "leading":
        values = (k * (T // steps))[::-1]
    else:
        values = np.round(T - k * T / steps) - 1
    return [int(v) for v in values]


@dataclass
class Chain:
    """One run of a sampler: the process, the steps it visits (`[t_0 > t_1 > ...]`), the noise
    generator(s) (`Noise`), and `memory` for what a multistep method keeps between steps."""

    diffusion: GaussianDiffusion
    timesteps: list[int]  # a timeline sampler's network timesteps may be fractional
    generator: Noise = None
    memory: dict[str, Any] = field(default_factory=dict)

    def t(self, i: int) -> int:
        """The step of iteration `i`."""
        return self.timesteps[i]

    def t_next(self, i: int) -> int:
        """The step iteration `i` goes to; -1 (the clean data, `alpha_bar = 1`) after the last."""
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1

    def noise(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Standard normal noise of `shape` (`[N, C, H, W]`) on `device` from the generator(s)."""
        if isinstance(self.generator, ImageGenerators):
            return self.generator.randn(shape, device)
        return torch.randn(shape, device=device, generator=self.generator)

    def noise_like(self, x: torch.Tensor) -> torch.Tensor:
        """`noise` shaped like `x`, on its device."""
        return self.noise(tuple(x.shape), x.device)


class Sampler(ABC):
    """Reverse-process sampler: `num_model_calls`, `settings`, and `sample`, which draws the
    starting noise and hands the chain to `run`."""

    name: ClassVar[str]

    @abstractmethod
    def num_model_calls(self, num_timesteps: int) -> int:
        """Network evaluations per image for a process of `num_timesteps` steps (exact)."""

    @abstractmethod
    def run(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion,
        x: torch.Tensor,
        chain: Chain,
        steps: Callable[[Iterable[int]], Iterable[int]],
    ) -> torch.Tensor:
        """Denoise `x` (`[N, C, H, W]`, pure noise in the process's scale) into images; `steps`
        wraps the iterable of step indices (progress bars)."""

    def settings(self) -> dict[str, Any]:
        """Name and settings, for logs and `sample_info.json`: `{"sampler": "ddim", "steps": 50,
        ...}` (a dataclass's fields)."""
        return {"sampler": self.name, **asdict(self)}  # type: ignore[call-overload]

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion,
        shape: tuple[int, ...],
        generator: Noise = None,
        progress: Progress = False,
        x_T: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate `[N, C, H, W]` images in [-1, 1] from pure noise `x_T` of `shape`.

        * `generator` (see `Noise`) draws `x_T`, then any noise the steps add;
        * `progress`: True for a tqdm bar, or a callable wrapping the iterable of step indices;
        * `x_T`: start from this noise instead of drawing it.

        The model runs in eval mode (dropout off); its previous mode is restored afterwards.
        """
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        if isinstance(generator, torch.Generator) and generator.device != device:
            raise UserError(
                f"generator is on {generator.device} but the model is on {device}: create it "
                f"with torch.Generator(device={str(device)!r})."
            )
        chain = Chain(diffusion, [], generator)
        x = chain.noise(shape, device) if x_T is None else x_T.to(device, torch.float32)

        def steps(iterable: Iterable[int]) -> Iterable[int]:
            if progress is True:
                from tqdm.auto import tqdm

                return tqdm(iterable, desc=f"{self.name} sampling", leave=False)
            return progress(iterable) if callable(progress) else iterable

        was_training = model.training
        model.eval()
        try:
            x = self.run(model, diffusion, x, chain, steps)
        finally:
            model.train(was_training)
        return x.clamp(-1.0, 1.0)


class StepSampler(Sampler):
    """A sampler making one model call per visited integer step: `timesteps` and `step`."""

    @abstractmethod
    def timesteps(self, num_timesteps: int) -> list[int]:
        """The steps visited, descending, for a process of `num_timesteps` steps."""

    @abstractmethod
    def step(self, chain: Chain, i: int, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """`x` at step `chain.t(i)` and the model's `output` there (both `[N, C, H, W]`) -> `x`
        at `chain.t_next(i)`."""

    def num_model_calls(self, num_timesteps: int) -> int:
        """One per visited step."""
        return len(self.timesteps(num_timesteps))

    def run(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion,
        x: torch.Tensor,
        chain: Chain,
        steps: Callable[[Iterable[int]], Iterable[int]],
    ) -> torch.Tensor:
        chain.timesteps = self.timesteps(diffusion.num_timesteps)
        for i in steps(range(len(chain.timesteps))):
            t = torch.full((x.shape[0],), chain.t(i), device=x.device, dtype=torch.long)
            x = self.step(chain, i, x, model(x, t))
        return x


def check_steps(steps: Any) -> None:
    """`steps` is a whole number >= 1 (its upper bound, T, is checked when sampling)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps={steps!r} must be a whole number >= 1, e.g. steps=50.")


class SpacedSampler(StepSampler):
    """A sampler over `steps` of the `T` steps, chosen by `spacing` (`spaced_timesteps`); the
    dataclass subclass declares both fields with its defaults."""

    steps: int
    spacing: Spacing

    def __post_init__(self) -> None:
        check_steps(self.steps)
        if self.spacing not in SPACINGS:
            raise UserError(
                f"spacing={self.spacing!r} is unknown: use one of {', '.join(SPACINGS)}."
            )

    def timesteps(self, num_timesteps: int) -> list[int]:
        return spaced_timesteps(num_timesteps, self.steps, self.spacing)


def sampler_or_default(sampler: Any, default: Sampler) -> Sampler:
    """`sampler` if it is a `Sampler`, `default` if None; anything else is a `UserError`."""
    if sampler is None:
        return default
    if not isinstance(sampler, Sampler):
        raise UserError(
            f"sampler={sampler!r} is not a sampler: give a Sampler object (a config with "
            f"_target_, e.g. {{_target_: ddpm_unet.models.samplers.ddim.DDIM, steps: 25}})."
        )
    return sampler
