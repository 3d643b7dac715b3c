"""The diffusion maths: schedules, q_sample, posterior, DDPM and DDIM samplers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_unet.models.diffusion import GaussianDiffusion, make_beta_schedule


class OracleEps(nn.Module):
    """Returns the exact noise that turns `x0` into `x_t`: the ideal eps-model for one image."""

    def __init__(self, diffusion: GaussianDiffusion, x0: torch.Tensor) -> None:
        super().__init__()
        self.diffusion = diffusion
        self.x0 = x0
        self.dummy = nn.Parameter(torch.zeros(()))  # samplers read the device from parameters

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.diffusion.sqrt_alpha_bar[t].view(-1, 1, 1, 1)
        s = self.diffusion.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
        return (x_t - a * self.x0) / s


class ModeRecorder(nn.Module):
    """A small eps-model with dropout that records the mode and grad state it ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.dropout = nn.Dropout(0.5)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.dropout(self.conv(x)) * 0.1 + (t.float() / 1000).view(-1, 1, 1, 1)


def test_linear_schedule_is_ddpm() -> None:
    betas = make_beta_schedule("linear", 1000)
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert torch.all(betas[1:] > betas[:-1])


def test_cosine_schedule_matches_closed_form_alpha_bar() -> None:
    T, s = 1000, 0.008
    alpha_bar = torch.cumprod(1 - make_beta_schedule("cosine", T), 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)


def test_bad_schedule_names_the_value() -> None:
    with pytest.raises(ValueError, match="'quadratic' is unknown"):
        make_beta_schedule("quadratic", 10)  # type: ignore[arg-type]


def test_q_sample_moments_match_closed_form() -> None:
    diffusion = GaussianDiffusion(1000, "linear")
    torch.manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7)
    for step in (0, 250, 999):
        t = torch.full((n,), step, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t, torch.randn_like(x0))
        alpha_bar = torch.cumprod(1 - make_beta_schedule("linear", 1000), 0)[step].item()
        assert x_t.mean().item() == pytest.approx(math.sqrt(alpha_bar) * 0.7, abs=0.01)
        assert x_t.var().item() == pytest.approx(1 - alpha_bar, rel=0.02, abs=1e-5)


def test_loss_is_zero_for_the_true_noise_and_positive_otherwise() -> None:
    diffusion = GaussianDiffusion(100)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    oracle = OracleEps(diffusion, x0)
    assert diffusion.loss(oracle, x0).item() == pytest.approx(0.0, abs=1e-8)
    assert diffusion.loss(lambda x, t: torch.zeros_like(x), x0).item() > 0.5


def test_posterior_and_predict_x0_recover_x0_with_true_noise() -> None:
    diffusion = GaussianDiffusion(1000)
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 400, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    assert torch.allclose(diffusion.predict_x0(x_t, t, noise), x0, atol=1e-4)
    # At t = 0 the posterior mean is x0 itself, and the last DDPM step adds no noise.
    x_1 = diffusion.q_sample(x0, torch.zeros(3, dtype=torch.long), noise)
    out = diffusion.ddpm_step(OracleEps(diffusion, x0), x_1, 0)
    assert torch.allclose(out, x0, atol=1e-5)


def test_ddpm_step_without_clipping_is_algorithm_2() -> None:
    diffusion = GaussianDiffusion(1000, clip_x0=False, variance="beta")
    torch.manual_seed(0)
    model = ModeRecorder().eval()  # dropout off, so both calls see the same eps
    x_t = torch.randn(2, 1, 4, 4)
    t = 500
    out = diffusion.ddpm_step(model, x_t, t, torch.Generator().manual_seed(1))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1))
    beta = diffusion.betas[t]
    eps = model(x_t, torch.full((2,), t))
    alg2 = (x_t - beta / diffusion.sqrt_one_minus_alpha_bar[t] * eps) / (1 - beta).sqrt()
    assert torch.allclose(out, alg2 + beta.sqrt() * z, atol=1e-5)


def test_ddim_step_with_true_noise_lands_on_q_sample_and_recovers_x0() -> None:
    diffusion = GaussianDiffusion(1000)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    oracle = OracleEps(diffusion, x0)
    x_t = diffusion.q_sample(x0, torch.full((2,), 700), noise)
    x_prev = diffusion.ddim_step(oracle, x_t, 700, 300, eta=0.0)
    assert torch.allclose(x_prev, diffusion.q_sample(x0, torch.full((2,), 300), noise), atol=1e-4)
    # The whole DDIM chain from pure noise ends exactly at x0 with the ideal model.
    samples = diffusion.sample(oracle, x0.shape, sampler="ddim", steps=20, x_T=noise)
    assert torch.allclose(samples, x0, atol=1e-4)


def test_ddim_eta_one_has_ddpm_posterior_variance() -> None:
    diffusion = GaussianDiffusion(1000)
    t = 600
    a_t, a_prev = diffusion.alpha_bar[t], diffusion.alpha_bar[t - 1]
    sigma2 = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    assert sigma2.item() == pytest.approx(diffusion.posterior_variance[t].item(), rel=1e-4)


def test_ddim_eta_zero_is_deterministic_for_a_fixed_start() -> None:
    diffusion = GaussianDiffusion(100)
    torch.manual_seed(0)
    model = ModeRecorder()
    x_T = torch.randn(2, 1, 4, 4)
    a = diffusion.sample(model, x_T.shape, "ddim", 10, 0.0, torch.Generator().manual_seed(1), x_T)
    b = diffusion.sample(model, x_T.shape, "ddim", 10, 0.0, torch.Generator().manual_seed(2), x_T)
    assert torch.equal(a, b)
    c = diffusion.sample(model, x_T.shape, "ddim", 10, 1.0, torch.Generator().manual_seed(2), x_T)
    assert not torch.equal(a, c)  # eta > 0 draws noise


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_same_seed_same_samples_in_eval_mode_without_grad(sampler: str) -> None:
    diffusion = GaussianDiffusion(50)
    torch.manual_seed(0)
    model = ModeRecorder().train()
    kwargs = dict(sampler=sampler, eta=0.5)
    a = diffusion.sample(model, (3, 1, 4, 4), generator=torch.Generator().manual_seed(7), **kwargs)
    b = diffusion.sample(model, (3, 1, 4, 4), generator=torch.Generator().manual_seed(7), **kwargs)
    c = diffusion.sample(model, (3, 1, 4, 4), generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    assert model.calls and all(mode == (False, False) for mode in model.calls)
    assert model.training  # the caller's mode is restored


def test_sample_reports_progress_and_validates_steps() -> None:
    diffusion = GaussianDiffusion(20)
    model = ModeRecorder()
    seen: list[int] = []

    def progress(steps):
        for s in steps:
            seen.append(s)
            yield s

    diffusion.sample(model, (1, 1, 4, 4), "ddim", steps=5, progress=progress)
    assert seen == list(range(5))
    with pytest.raises(ValueError, match="steps=7"):
        diffusion.sample(model, (1, 1, 4, 4), "ddpm", steps=7)
    with pytest.raises(ValueError, match="steps=50 must be between 1 and num_timesteps=20"):
        diffusion.sample(model, (1, 1, 4, 4), "ddim", steps=50)


def test_ddim_timesteps_count_and_ends() -> None:
    diffusion = GaussianDiffusion(1000)
    assert diffusion.ddim_timesteps(1) == [999]  # one step starts from pure noise
    for steps in (2, 7, 50, 999, 1000):
        ts = diffusion.ddim_timesteps(steps)
        assert len(ts) == len(set(ts)) == steps
        assert ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)


def test_min_snr_loss_weights_each_image_by_min_snr_gamma_over_snr() -> None:
    gamma = 5.0
    diffusion = GaussianDiffusion(1000, "cosine", loss_weighting="min_snr", min_snr_gamma=gamma)
    alpha_bar = torch.cumprod(1 - make_beta_schedule("cosine", 1000), 0)
    snr = alpha_bar / (1 - alpha_bar)
    t = torch.tensor([0, 50, 300, 999])
    expected_w = (snr[t].clamp(max=gamma) / snr[t]).float()
    # Nearly clean steps (SNR >> gamma) are down-weighted, noisy steps (SNR <= gamma) keep 1.
    assert expected_w[0] < 0.01 and expected_w[-1] == 1.0
    torch.manual_seed(0)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    model = lambda x, t: 0.5 * x  # noqa: E731 - a fixed eps-model with a different error per image
    per_image = (model(diffusion.q_sample(x0, t, noise), t) - noise).square().mean(dim=(1, 2, 3))
    loss = diffusion.loss(model, x0, t, noise)
    assert loss.item() == pytest.approx((expected_w * per_image).mean().item(), rel=1e-5)
    uniform = GaussianDiffusion(1000, "cosine").loss(model, x0, t, noise)
    assert uniform.item() == pytest.approx(per_image.mean().item(), rel=1e-5)
    assert loss.item() < uniform.item()


def test_bad_loss_weighting_names_the_value() -> None:
    with pytest.raises(ValueError, match="loss_weighting='snr'"):
        GaussianDiffusion(10, loss_weighting="snr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_snr_gamma=0"):
        GaussianDiffusion(10, loss_weighting="min_snr", min_snr_gamma=0)
