"""The DDPM forward process, its training loss, and the DDPM and DDIM samplers.

Independent of Lightning and of the network: any `eps_model(x_t, t) -> eps` works, where `x_t` is
`[batch, channels, height, width]` and `t` a `[batch]` tensor of integer steps in `[0, T)`.

Notation (Ho et al. 2020): `alpha_t = 1 - beta_t`, `alpha_bar_t = prod_{s<=t} alpha_s`,
`q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`. Steps are 0-indexed, so the
paper's `t = 1..T` is `t = 0..T-1` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from ddpm_unet.utils.errors import UserError

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ScheduleName = Literal["linear", "cosine"]
SamplerName = Literal["ddpm", "ddim"]
VarianceType = Literal["beta", "posterior"]
LossWeighting = Literal["uniform", "min_snr"]


def make_beta_schedule(
    name: ScheduleName,
    num_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
) -> torch.Tensor:
    """Return `betas` of shape `[num_timesteps]` (float64).

    * `linear`: evenly spaced from `beta_start` to `beta_end` (DDPM: 1e-4 to 0.02 over T=1000).
    * `cosine`: `alpha_bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)` (Nichol & Dhariwal 2021),
      betas clipped at 0.999 so the last step stays finite.
    """
    if num_timesteps < 1:
        raise UserError(f"num_timesteps={num_timesteps} must be at least 1.")
    if name == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise UserError(
                f"linear schedule needs 0 < beta_start <= beta_end < 1, got "
                f"beta_start={beta_start}, beta_end={beta_end}."
            )
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if name == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
        return betas.clamp(max=0.999)
    raise UserError(f"beta schedule {name!r} is unknown: use 'linear' or 'cosine'.")


def _extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Pick `values[t]` per sample and shape it `[batch, 1, 1, ...]` to broadcast over images."""
    return values.gather(0, t).reshape(t.shape[0], *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """Noise schedule, forward process `q`, epsilon-prediction loss and samplers.

    An `nn.Module` only so that its schedule tensors follow `.to(device)`; they are non-persistent
    buffers (derived from the constructor arguments, so checkpoints do not store them).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        schedule: ScheduleName = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        variance: VarianceType = "beta",
        clip_x0: bool = True,
        loss_weighting: LossWeighting = "uniform",
        min_snr_gamma: float = 5.0,
    ) -> None:
        super().__init__()
        if variance not in ("beta", "posterior"):
            raise UserError(f"variance={variance!r} must be 'beta' or 'posterior'.")
        if loss_weighting not in ("uniform", "min_snr"):
            raise UserError(f"loss_weighting={loss_weighting!r} must be 'uniform' or 'min_snr'.")
        if min_snr_gamma <= 0:
            raise UserError(f"min_snr_gamma={min_snr_gamma} must be > 0 (Hang et al. use 5).")
        self.num_timesteps = num_timesteps
        self.schedule = schedule
        self.variance = variance
        self.clip_x0 = clip_x0
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        betas = make_beta_schedule(schedule, num_timesteps, beta_start, beta_end)
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(c0 * x_0 + ct * x_t, posterior_variance).
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        snr = alpha_bar / (1 - alpha_bar)  # signal-to-noise ratio of x_t
        buffers = {
            "betas": betas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "posterior_variance": posterior_variance,
            # Min-SNR-gamma weight of the epsilon loss: min(SNR_t, gamma) / SNR_t, with
            # SNR_t = alpha_bar_t / (1 - alpha_bar_t) (Hang et al. 2023). It is 1 at noisy steps
            # and shrinks at nearly clean ones, whose easy targets otherwise slow training down.
            "min_snr_weight": snr.clamp(max=min_snr_gamma) / snr,
            "posterior_mean_coef_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_mean_coef_xt": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
        }
        for name, value in buffers.items():
            # Computed in float64 for accuracy near t = 0, stored in float32 for the samplers.
            self.register_buffer(name, value.float(), persistent=False)

    # ----------------------------------------------------------------- forward process and loss
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample `x_t ~ q(x_t | x_0)`: `sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`.

        `x0`, `noise`: `[batch, C, H, W]`; `t`: `[batch]` integer steps -> `[batch, C, H, W]`.
        """
        return (
            _extract(self.sqrt_alpha_bar, t, x0.ndim) * x0
            + _extract(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * noise
        )

    def sample_timesteps(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform integer steps `[batch_size]` in `[0, T)`."""
        return torch.randint(
            0, self.num_timesteps, (batch_size,), device=device, generator=generator
        )

    def loss(
        self,
        eps_model: EpsModel,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The DDPM objective `|| eps - eps_model(x_t, t) ||^2`, averaged; a scalar.

        With `loss_weighting="uniform"` this is DDPM's simple loss; with `"min_snr"` each image's
        squared error is weighted by `min(SNR_t, gamma) / SNR_t`. `t` and `noise` are drawn when
        not given; pass them to evaluate on fixed draws.
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        # Per-image MSE `[batch]`; its plain mean is DDPM's simple loss (F.mse_loss).
        per_image = (eps_model(x_t, t).float() - noise.float()).square().flatten(1).mean(dim=1)
        if self.loss_weighting == "min_snr":
            per_image = self.min_snr_weight[t] * per_image
        return per_image.mean()

    # ----------------------------------------------------------------- reverse-process maths
    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert `q_sample` for `x_0`: `(x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)`."""
        return (x_t - _extract(self.sqrt_one_minus_alpha_bar, t, x_t.ndim) * eps) / _extract(
            self.sqrt_alpha_bar, t, x_t.ndim
        )

    def q_posterior_mean(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Mean of `q(x_{t-1} | x_t, x_0)` (eq. 7 of Ho et al.), `[batch, C, H, W]`."""
        return (
            _extract(self.posterior_mean_coef_x0, t, x_t.ndim) * x0
            + _extract(self.posterior_mean_coef_xt, t, x_t.ndim) * x_t
        )

    def ddpm_step(
        self,
        eps_model: EpsModel,
        x_t: torch.Tensor,
        t: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One ancestral step `x_t -> x_{t-1}` (Algorithm 2); no noise is added at `t = 0`.

        `x_0` is predicted from the model's noise (clipped to [-1, 1] when `clip_x0`, as in the
        original DDPM code), then the posterior mean is taken; without clipping this equals
        Algorithm 2's `(x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)`.
        """
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        eps = eps_model(x_t, t_batch).float()
        x0 = self.predict_x0(x_t, t_batch, eps)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean = self.q_posterior_mean(x0, x_t, t_batch)
        if t == 0:
            return mean
        var = self.betas[t] if self.variance == "beta" else self.posterior_variance[t]
        noise = torch.randn(x_t.shape, device=x_t.device, generator=generator)
        return mean + var.sqrt() * noise

    def ddim_step(
        self,
        eps_model: EpsModel,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One DDIM step `x_t -> x_{t_prev}` (Song et al. 2021, eq. 12); `t_prev = -1` means x_0.

        `sigma = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))`; `eta = 0` is
        deterministic, `eta = 1` matches DDPM's posterior variance.
        """
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        eps = eps_model(x_t, t_batch).float()
        x0 = self.predict_x0(x_t, t_batch, eps)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            # Keep eps consistent with the clipped x0 so the update stays on the DDIM path.
            eps = (x_t - self.sqrt_alpha_bar[t] * x0) / self.sqrt_one_minus_alpha_bar[t]
        if t_prev < 0:
            return x0
        a_t = self.alpha_bar[t]
        a_prev = self.alpha_bar[t_prev]
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        x_prev = a_prev.sqrt() * x0 + direction
        if eta > 0:
            noise = torch.randn(x_t.shape, device=x_t.device, generator=generator)
            x_prev = x_prev + sigma * noise
        return x_prev

    def ddim_timesteps(self, steps: int) -> list[int]:
        """`steps` evenly spaced steps from `T - 1` down to 0 (DDIM's uniform skip)."""
        if not 1 <= steps <= self.num_timesteps:
            raise UserError(
                f"sampler steps={steps} must be between 1 and num_timesteps={self.num_timesteps}."
            )
        # Spacing (T - 1) / (steps - 1) >= 1, so the rounded steps are distinct; one step is T - 1.
        return torch.linspace(self.num_timesteps - 1, 0, steps).round().long().tolist()

    # ----------------------------------------------------------------- sampling loops
    @torch.no_grad()
    def sample(
        self,
        eps_model: nn.Module,
        shape: tuple[int, ...],
        sampler: SamplerName = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        progress: bool | Callable[[Iterable[int]], Iterable[int]] = False,
    ) -> torch.Tensor:
        """Generate `[batch, C, H, W]` images in [-1, 1] from pure noise `x_T` of `shape`.

        * `sampler="ddpm"`: ancestral sampling over all `T` steps (`steps` must be None or T).
        * `sampler="ddim"`: `steps` evenly spaced steps (default 50), stochasticity `eta`.
        * `generator`: a `torch.Generator` on the model's device, for reproducible samples.
        * `progress`: True for a tqdm bar, or a callable wrapping the step iterable.

        The model runs in eval mode (dropout off) under `torch.no_grad()`; its previous mode is
        restored afterwards.
        """
        device = next(iter(eps_model.parameters())).device
        if generator is not None and generator.device != device:
            raise UserError(
                f"generator is on {generator.device} but the model is on {device}: create it "
                f"with torch.Generator(device={str(device)!r})."
            )
        if sampler == "ddpm":
            if steps not in (None, self.num_timesteps):
                raise UserError(
                    f"sampler='ddpm' runs all num_timesteps={self.num_timesteps} steps, got "
                    f"steps={steps}; use sampler='ddim' for fewer steps."
                )
            timesteps = list(range(self.num_timesteps - 1, -1, -1))
        elif sampler == "ddim":
            timesteps = self.ddim_timesteps(50 if steps is None else steps)
        else:
            raise UserError(f"sampler={sampler!r} is unknown: use 'ddpm' or 'ddim'.")

        x = (
            torch.randn(shape, device=device, generator=generator)
            if x_T is None
            else x_T.to(device=device, dtype=torch.float32)
        )
        iterator: Iterable[int] = range(len(timesteps))
        if progress is True:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"{sampler} sampling", leave=False)
        elif callable(progress):
            iterator = progress(iterator)

        was_training = eps_model.training
        eps_model.eval()
        try:
            for i in iterator:
                t = timesteps[i]
                if sampler == "ddpm":
                    x = self.ddpm_step(eps_model, x, t, generator)
                else:
                    t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                    x = self.ddim_step(eps_model, x, t, t_prev, eta, generator)
        finally:
            eps_model.train(was_training)
        return x.clamp(-1.0, 1.0)
