"""The diffusion maths: schedules, q_sample, targets, the loss and its weighting, DDPM sampling.

The cross-checks against diffusers' schedulers (every sampler, every target) are in
tests/test_samplers.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_unet.models import schedules
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers import DDIM, DDPM, Chain
from ddpm_unet.models.schedules import make_betas, register_schedule
from ddpm_unet.utils.errors import UserError


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


# ------------------------------------------------------------------------ schedules
def test_linear_schedule_is_ddpm() -> None:
    betas = make_betas("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert torch.all(betas[1:] > betas[:-1])
    assert make_betas("linear", 10, beta_start=0.001, beta_end=0.01)[-1].item() == 0.01


@pytest.mark.parametrize("s", [0.008, 0.02])
def test_cosine_schedule_matches_closed_form_alpha_bar(s: float) -> None:
    T = 1000
    alpha_bar = torch.cumprod(1 - make_betas("cosine", T, s=s), 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)


def lucidrains_sigmoid_beta_schedule(timesteps, start=-3, end=3, tau=1, clamp_min=1e-5):
    """denoising-diffusion-pytorch's `sigmoid_beta_schedule` (the reference), verbatim but for
    `v_start`/`v_end`: float32 there (their rounding shows at 2e-5), float64 here."""
    steps = timesteps + 1
    t = torch.linspace(0, timesteps, steps, dtype=torch.float64) / timesteps
    v_start = torch.tensor(start / tau, dtype=torch.float64).sigmoid()
    v_end = torch.tensor(end / tau, dtype=torch.float64).sigmoid()
    alphas_cumprod = (-((t * (end - start) + start) / tau).sigmoid() + v_end) / (v_end - v_start)
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.999)


@pytest.mark.parametrize(("start", "end", "tau"), [(-3, 3, 1.0), (0, 3, 0.5), (-3, 3, 1.1)])
def test_sigmoid_schedule_matches_lucidrains(start: float, end: float, tau: float) -> None:
    ours = make_betas("sigmoid", 1000, start=start, end=end, tau=tau)
    ref = lucidrains_sigmoid_beta_schedule(1000, start, end, tau)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=0)


def test_bad_schedule_names_the_value() -> None:
    with pytest.raises(
        UserError, match="^schedule='quadratic' is unknown: use one of cosine, linear, sigmoid"
    ):
        make_betas("quadratic", 10)
    with pytest.raises(UserError, match="num_timesteps=0"):
        make_betas("linear", 0)


def test_a_schedule_refuses_arguments_it_does_not_use() -> None:
    with pytest.raises(
        UserError,
        match=r"^schedule_kwargs has beta_start, but the cosine schedule "
        r"does not use beta_start \(it takes s\)",
    ):
        GaussianDiffusion(100, "cosine", schedule_kwargs={"beta_start": 1e-4})
    with pytest.raises(UserError, match="linear schedule does not use s "):
        GaussianDiffusion(100, "linear", schedule_kwargs={"s": 0.008})
    with pytest.raises(UserError, match="got beta_start=0.5, beta_end=0.02"):
        GaussianDiffusion(100, "linear", schedule_kwargs={"beta_start": 0.5})
    with pytest.raises(UserError, match="^tau=0 must be > 0"):
        make_betas("sigmoid", 100, tau=0)


def test_adding_a_schedule_is_one_function() -> None:
    @register_schedule("constant")
    def constant(num_timesteps: int, beta: float = 0.01) -> torch.Tensor:
        return torch.full((num_timesteps,), beta, dtype=torch.float64)

    try:
        diffusion = GaussianDiffusion(10, "constant", schedule_kwargs={"beta": 0.1})
        assert diffusion.alpha_bar[-1].item() == pytest.approx(0.9**10)
    finally:
        del schedules.SCHEDULES["constant"]


# ------------------------------------------------------------------------ forward process, loss
def test_q_sample_moments_match_closed_form() -> None:
    diffusion = GaussianDiffusion(1000, "linear")
    torch.manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7)
    for step in (0, 250, 999):
        t = torch.full((n,), step, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t, torch.randn_like(x0))
        alpha_bar = torch.cumprod(1 - make_betas("linear", 1000), 0)[step].item()
        assert x_t.mean().item() == pytest.approx(math.sqrt(alpha_bar) * 0.7, abs=0.01)
        assert x_t.var().item() == pytest.approx(1 - alpha_bar, rel=0.02, abs=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_eps_loss_is_exactly_ddpms_simple_loss(schedule: str) -> None:
    """The default target is bit for bit what it was before x0/v existed: the per-image MSE of
    the noise, averaged over images (DDPM's simple loss, F.mse_loss up to summation order)."""
    diffusion = GaussianDiffusion(1000, schedule)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 4, 4, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, 1000, (8,), generator=gen)
    model = lambda x, t: 0.5 * x + t.view(-1, 1, 1, 1) / 1000  # noqa: E731
    a = diffusion.sqrt_alpha_bar[t].view(-1, 1, 1, 1)
    s = diffusion.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
    output = model(a * x0 + s * noise, t)
    loss = diffusion.loss(model, x0, t, noise)
    assert torch.equal(loss, (output - noise).square().flatten(1).mean(dim=1).mean())
    assert loss.item() == pytest.approx(F.mse_loss(output, noise).item(), rel=1e-6)


def test_loss_is_zero_for_the_true_target_of_each_prediction_type() -> None:
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 30, 60, 99])
    for prediction in ("eps", "x0", "v"):
        diffusion = GaussianDiffusion(100, prediction_type=prediction)  # type: ignore[arg-type]
        target = diffusion.target(x0, t, noise)
        assert diffusion.loss(lambda x, tt, y=target: y, x0, t, noise).item() == 0.0
        assert diffusion.loss(lambda x, tt: torch.zeros_like(x), x0, t, noise).item() > 0.1
    oracle = OracleEps(GaussianDiffusion(100), x0)
    assert GaussianDiffusion(100).loss(oracle, x0).item() == pytest.approx(0.0, abs=1e-8)


def test_min_snr_loss_weights_each_image_by_min_snr_gamma_over_snr() -> None:
    gamma = 5.0
    diffusion = GaussianDiffusion(1000, "cosine", loss_weighting="min_snr", min_snr_gamma=gamma)
    alpha_bar = torch.cumprod(1 - make_betas("cosine", 1000), 0)
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


def test_min_snr_weights_of_the_three_targets_give_one_objective() -> None:
    """Hang et al.: min(SNR, gamma) weights the x0 error; an eps error is sqrt(SNR) times the x0
    error and a v error sqrt(SNR + 1) times, so with their weights (divided by SNR and SNR + 1)
    the same prediction has the same loss whichever target the network outputs."""
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(6, 1, 4, 4, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    x0_hat = x0 + 0.3 * torch.randn(x0.shape, generator=gen)  # one imperfect prediction of x0
    t = torch.tensor([0, 5, 100, 400, 800, 999])
    losses = {}
    for prediction in ("eps", "x0", "v"):
        diffusion = GaussianDiffusion(
            1000,
            "cosine",
            prediction_type=prediction,
            loss_weighting="min_snr",  # type: ignore[arg-type]
        )
        a = diffusion.sqrt_alpha_bar[t].view(-1, 1, 1, 1)
        s = diffusion.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
        x_t = a * x0 + s * noise
        eps_hat = (x_t - a * x0_hat) / s
        output = {"eps": eps_hat, "x0": x0_hat, "v": a * eps_hat - s * x0_hat}[prediction]
        losses[prediction] = diffusion.loss(lambda x, tt, o=output: o, x0, t, noise).item()
    assert losses["eps"] == pytest.approx(losses["x0"], rel=1e-3)
    assert losses["v"] == pytest.approx(losses["x0"], rel=1e-3)


def test_bad_diffusion_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="loss_weighting='snr'"):
        GaussianDiffusion(10, loss_weighting="snr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_snr_gamma=0"):
        GaussianDiffusion(10, loss_weighting="min_snr", min_snr_gamma=0)
    with pytest.raises(
        UserError, match="^prediction_type='noise' is unknown: use one of eps, x0, v"
    ):
        GaussianDiffusion(10, prediction_type="noise")  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"^schedule_kwargs=\[1\] must be a mapping"):
        GaussianDiffusion(10, schedule_kwargs=[1])  # type: ignore[arg-type]


# ------------------------------------------------------------------------ sampling steps
def test_ddpm_last_step_lands_on_x0_with_true_noise() -> None:
    diffusion = GaussianDiffusion(1000)
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 400, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        got, _ = diffusion.split_prediction(noise[i : i + 1], x_t[i : i + 1], step)
        assert torch.allclose(got, x0[i : i + 1], atol=1e-4)
    # At t = 0 the posterior mean is x0 itself, and the last DDPM step adds no noise.
    x_1 = diffusion.q_sample(x0, torch.zeros(3, dtype=torch.long), noise)
    chain = Chain(diffusion, [0])
    out = DDPM().step(chain, 0, x_1, OracleEps(diffusion, x0)(x_1, torch.zeros(3).long()))
    assert torch.allclose(out, x0, atol=1e-5)


def test_ddpm_step_without_clipping_is_algorithm_2() -> None:
    diffusion = GaussianDiffusion(1000, clip_x0=False, variance="beta")
    torch.manual_seed(0)
    model = ModeRecorder().eval()  # dropout off, so both calls see the same eps
    x_t = torch.randn(2, 1, 4, 4)
    t = 500
    eps = model(x_t, torch.full((2,), t))
    out = DDPM().step(Chain(diffusion, [t, t - 1], torch.Generator().manual_seed(1)), 0, x_t, eps)
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(1))
    beta = diffusion.betas[t]
    alg2 = (x_t - beta / diffusion.sqrt_one_minus_alpha_bar[t] * eps) / (1 - beta).sqrt()
    assert torch.allclose(out, alg2 + beta.sqrt() * z, atol=1e-5)


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

    def run(eta: float, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return DDIM(steps=10, eta=eta).sample(model, diffusion, x_T.shape, gen, x_T=x_T)

    a, b = run(0.0, 1), run(0.0, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, run(1.0, 2))  # eta > 0 draws noise


@pytest.mark.parametrize("sampler", [DDPM(), DDIM(steps=10, eta=0.5)])
def test_same_seed_same_samples_in_eval_mode_without_grad(sampler) -> None:
    diffusion = GaussianDiffusion(50)
    torch.manual_seed(0)
    model = ModeRecorder().train()

    def run(seed: int) -> torch.Tensor:
        return sampler.sample(model, diffusion, (3, 1, 4, 4), torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
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

    DDIM(steps=5).sample(model, diffusion, (1, 1, 4, 4), progress=progress)
    assert seen == list(range(5))
    with pytest.raises(ValueError, match="steps=50 must be between 1 and num_timesteps=20"):
        DDIM(steps=50).sample(model, diffusion, (1, 1, 4, 4))
    with pytest.raises(UserError, match="generator is on cpu but the model is on meta"):
        DDPM().sample(ModeRecorder().to("meta"), diffusion, (1, 1, 4, 4), torch.Generator())


def test_ddim_timesteps_count_and_ends() -> None:
    for steps in (1, 2, 7, 50, 999, 1000):
        ts = DDIM(steps=steps).timesteps(1000)
        assert len(ts) == len(set(ts)) == steps
        assert ts[0] == 999 and ts == sorted(ts, reverse=True)
        assert steps == 1 or ts[-1] == 0  # one step starts from pure noise
