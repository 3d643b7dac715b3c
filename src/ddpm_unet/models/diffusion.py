"""The DDPM forward process, its training target (`eps`, `x0` or `v`) and loss.

Independent of Lightning, of the network and of the samplers: any `model(x_t, t)` works, where
`x_t` is `[batch, channels, height, width]` and `t` a `[batch]` tensor of integer steps in
`[0, T)`. The samplers (`models/samplers/`) ask this class to turn a model output into
`(x0, eps)` whatever the target.

Notation (Ho et al. 2020): `alpha_t = 1 - beta_t`, `alpha_bar_t = prod_{s<=t} alpha_s`,
`q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`. Steps are 0-indexed, so the
paper's `t = 1..T` is `t = 0..T-1` here. The targets: `eps` (the noise, Ho et al.), `x0` (the
clean image), `v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0` (Salimans & Ho 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from ddpm_unet.models.schedules import make_betas
from ddpm_unet.utils.errors import UserError


def _extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Pick `values[t]` per sample and shape it `[batch, 1, 1, ...]` to broadcast over images."""
    return values.gather(0, t).reshape(t.shape[0], *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """Noise schedule, forward process `q`, training target and loss.

    Args:
        num_timesteps: `T`.
        schedule: a name registered in `models/schedules.py` (`linear`, `cosine`, `sigmoid`).
        schedule_kwargs: that schedule's arguments (None: its defaults).
        prediction_type: what the network predicts: `eps`, `x0` or `v`.
        variance: DDPM sampling variance: `beta` (sigma^2 = beta_t) or `posterior` (beta tilde).
        clip_x0: samplers clip predicted `x0` to [-1, 1] (the data range).
        loss_weighting: `uniform` (the simple MSE of the target) or `min_snr`.
        min_snr_gamma: gamma of Min-SNR weighting.

    An `nn.Module` only so that its float32 schedule tensors follow `.to(device)` (non-persistent
    buffers: checkpoints do not store them). The float64 tables (`alpha_bar64`, `betas64`) stay on
    the CPU: samplers compute every coefficient from them in float64 and cast it once.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        schedule: str = "linear",
        schedule_kwargs: Mapping[str, Any] | None = None,
        prediction_type: Literal["eps", "x0", "v"] = "eps",
        variance: Literal["beta", "posterior"] = "beta",
        clip_x0: bool = True,
        loss_weighting: Literal["uniform", "min_snr"] = "uniform",
        min_snr_gamma: float = 5.0,
    ) -> None:
        super().__init__()
        # `num_timesteps`, `schedule` and its arguments are checked by `make_betas` below.
        for name, value, choices in (
            ("prediction_type", prediction_type, ("eps", "x0", "v")),
            ("variance", variance, ("beta", "posterior")),
            ("loss_weighting", loss_weighting, ("uniform", "min_snr")),
        ):
            if value not in choices:
                raise UserError(f"{name}={value!r} is unknown: use one of {', '.join(choices)}.")
        if (
            isinstance(min_snr_gamma, bool)
            or not isinstance(min_snr_gamma, int | float)
            or not (min_snr_gamma > 0)
        ):
            raise UserError(f"min_snr_gamma={min_snr_gamma!r} must be a number > 0, e.g. 5.0.")
        if schedule_kwargs is not None and not isinstance(schedule_kwargs, Mapping):
            raise UserError(
                f"schedule_kwargs={schedule_kwargs!r} must be a mapping of the schedule's "
                "arguments, e.g. {s: 0.008} for cosine, or null for its defaults."
            )
        self.num_timesteps = num_timesteps
        self.prediction_type = prediction_type
        self.variance = variance
        self.clip_x0 = clip_x0
        self.loss_weighting = loss_weighting
        self.betas64 = make_betas(schedule, num_timesteps, **(schedule_kwargs or {}))
        self.alpha_bar64 = alpha_bar = torch.cumprod(1.0 - self.betas64, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        # Min-SNR-gamma (Hang et al. 2023) shrinks the loss at nearly clean steps, whose easy
        # targets otherwise slow training down. `min(SNR, gamma)` weights the x0 loss; the eps and
        # v losses are the x0 loss times SNR and SNR + 1, so their weights are divided by those.
        snr = alpha_bar / (1 - alpha_bar)  # signal-to-noise ratio of x_t
        to_x0_loss = {"eps": snr, "x0": 1.0, "v": snr + 1}[prediction_type]
        buffers = {
            "betas": self.betas64,
            "alpha_bar": alpha_bar,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            # of the posterior q(x_{t-1} | x_t, x_0)
            "posterior_variance": self.betas64 * (1 - alpha_bar_prev) / (1 - alpha_bar),
            "min_snr_weight": snr.clamp(max=min_snr_gamma) / to_x0_loss,
        }
        for name, value in buffers.items():
            # Computed in float64 for accuracy near t = 0, stored in float32 for training.
            self.register_buffer(name, value.float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample `x_t ~ q(x_t | x_0)`: `sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`.

        `x0`, `noise`: `[batch, C, H, W]`; `t`: `[batch]` integer steps -> `[batch, C, H, W]`.
        """
        return (
            _extract(self.sqrt_alpha_bar, t, x0.ndim) * x0
            + _extract(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * noise
        )

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network learns to output for `x_t = q_sample(x0, t, noise)`, `[batch, C, H, W]`:
        `noise` (eps), `x0`, or `v = sqrt(a_bar) noise - sqrt(1 - a_bar) x0`."""
        if self.prediction_type == "eps":
            return noise
        if self.prediction_type == "x0":
            return x0
        return (
            _extract(self.sqrt_alpha_bar, t, x0.ndim) * noise
            - _extract(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * x0
        )

    def loss(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`|| target - model(x_t, t) ||^2` averaged over pixels and images; a scalar.

        With `loss_weighting="uniform"` this is DDPM's simple loss (for `eps`); with `"min_snr"`
        each image's squared error is weighted by `min_snr_weight[t]` of the target. `t` (uniform
        in `[0, T)`) and `noise` are drawn when not given; pass them to evaluate on fixed draws.
        """
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        target = self.target(x0, t, noise)
        # Per-image MSE `[batch]`; its plain mean is the simple loss (F.mse_loss).
        per_image = (model(x_t, t).float() - target.float()).square().flatten(1).mean(dim=1)
        if self.loss_weighting == "min_snr":
            per_image = self.min_snr_weight[t] * per_image
        return per_image.mean()

    def alpha_bar_at(self, t: int) -> float:
        """`alpha_bar_t` as a float64 Python number; `t < 0` means the clean data (1.0)."""
        return 1.0 if t < 0 else float(self.alpha_bar64[t])

    def split_prediction(
        self, output: torch.Tensor, x_t: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's `output` at step `t` on `x_t` (both `[batch, C, H, W]`) -> `(x0, eps)`.

        With `clip_x0`, `x0` is clipped to [-1, 1] and `eps` recomputed from the clipped `x0`,
        so that `x_t = sqrt(a) x0 + sqrt(1 - a) eps` still holds and samplers stay on their path.
        """
        a = self.alpha_bar_at(t)
        sqrt_a, sqrt_1ma = math.sqrt(a), math.sqrt(1.0 - a)  # float64, cast once on the tensors
        output = output.float()
        if self.prediction_type == "eps":
            x0, eps = (x_t - sqrt_1ma * output) / sqrt_a, output
        elif self.prediction_type == "x0":
            x0, eps = output, (x_t - sqrt_a * output) / sqrt_1ma
        else:  # v
            x0, eps = sqrt_a * x_t - sqrt_1ma * output, sqrt_a * output + sqrt_1ma * x_t
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x_t - sqrt_a * x0) / sqrt_1ma
        return x0, eps
