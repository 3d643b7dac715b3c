"""The noise-level timeline and its samplers (Euler, Euler-ancestral, Heun, DPM-Solver++ on
Karras sigmas and its SDE form, UniPC) cross-checked against diffusers' schedulers, for eps, x0
and v models.

Same model (`ToyModel`: a fixed deterministic function of (x, t), the scheduler maths is what is
tested), same starting noise, same step noise; whole 10-step chains agree to 1e-5. diffusers'
schedulers build their tables from float32 betas; they are given our float64 `alpha_bar`
(`alphas_cumprod`) before `set_timesteps`, so both sides start from the same sigmas (float32
betas put sigma_0 off by ~1e-3 relative, which the Karras grid inherits).

Faithfulness:
* Euler family: on the linear schedule. diffusers computes these in float32 on `x~`, which is
  ~2e4 x_T at the cosine schedule's sigma_max (1e-3 absolute rounding), too coarse for 1e-5;
  the cosine schedule is covered by the multistep solvers (on x_t) and the float64 checks.
  diffusers' `sample` is our `x~ = x_t sqrt(1 + sigma^2)`: its chain starts from
  `x_T sqrt(1 + sigma_0^2)`, feeds the network `scale_model_input(sample) = x_t`, and ends at
  sigma = 0, where `x~ = x`.
* diffusers' multistep solvers (DPM-Solver++, UniPC) round the network's t on Karras sigmas to an
  integer while keeping the exact sigma in the update (a quirk: the network is asked about
  another noise level than the solver assumes). We follow k-diffusion and pass the interpolated t;
  the reference chain is fed our network outputs at our t, and the test checks that its t are ours
  rounded, so the update maths is compared exactly.
* EulerAncestralDiscreteScheduler has no x0 target ("not implemented"): for the x0 model it is
  given the same network's output as eps, `(sample - x0) / sigma`, the identical denoiser.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from ddpm_unet.models.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_unet.models.samplers import (  # noqa: E402
    DDIM,
    DPMSolver,
    Euler,
    EulerAncestral,
    Heun,
    UniPC,
    make_timeline,
    sigma_to_t,
)
from ddpm_unet.models.samplers.timeline import model_sigmas  # noqa: E402
from ddpm_unet.utils.errors import UserError  # noqa: E402

TARGET = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SHAPE = (3, 2, 4, 4)
T = 1000


class ToyModel(nn.Module):
    """A fixed function of `(x, t)` (any real t), linear in x; counts its calls and their t."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # samplers read the device from parameters
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t)
        s = (t.to(x.dtype) / T).view(-1, 1, 1, 1)
        return 0.6 * x - 0.2 * x.flip(1) + 0.1 * x.roll(1, dims=-1) + 0.3 * s - 0.1


def start_noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def reference(cls, diffusion: GaussianDiffusion, prediction: str, **config):
    """A diffusers scheduler on our betas and our float64 alpha_bar."""
    ref = cls(
        num_train_timesteps=T,
        trained_betas=diffusion.betas64.numpy(),
        prediction_type=TARGET[prediction],
        **config,
    )
    ref.alphas_cumprod = diffusion.alpha_bar64.clone()
    return ref


def ours(sampler, diffusion: GaussianDiffusion, seed: int = 7) -> torch.Tensor:
    return sampler.sample(
        ToyModel(), diffusion, SHAPE, torch.Generator().manual_seed(seed), x_T=start_noise()
    )


def euler_family_chain(ref, model: nn.Module, steps: int, eps_for_x0: bool = False, seed: int = 7):
    """diffusers' pipeline loop on `x~`; `eps_for_x0`: give the scheduler the x0 model as eps."""
    ref.set_timesteps(steps)
    # the first noise level: T - 1 except for `leading` (float64, as ours)
    sigma_0 = math.sqrt(1 / float(ref.alphas_cumprod[round(float(ref.timesteps[0]))]) - 1)
    x = start_noise() * math.sqrt(1 + sigma_0**2)
    gen = torch.Generator().manual_seed(seed)
    for i, t in enumerate(ref.timesteps):
        x_t = ref.scale_model_input(x, t)
        out = model(x_t, t.expand(SHAPE[0]))
        if eps_for_x0:  # (Euler-ancestral only: one model call per sigma)
            out = (x - out) / ref.sigmas[i]
        extra = {} if isinstance(ref, diffusers.HeunDiscreteScheduler) else {"generator": gen}
        x = ref.step(out, t, x, **extra).prev_sample
    return x.clamp(-1, 1)


def same_noise(module, monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' step noise drawn as ours: float32 `torch.randn` from the same generator."""

    def randn(shape, generator=None, device=None, dtype=None, **_):
        return torch.randn(shape, generator=generator).to(dtype)

    monkeypatch.setattr(module, "randn_tensor", randn)


# ------------------------------------------------------------------------ the timeline
def test_sigma_to_t_interpolates_log_sigma_as_diffusers() -> None:
    diffusion = GaussianDiffusion(T, "cosine")
    table = model_sigmas(diffusion)
    ref = diffusers.EulerDiscreteScheduler(num_train_timesteps=T)
    probes = np.concatenate([table[[0, 1, 500, 998, 999]], np.geomspace(1e-3, 1e4, 37)])
    expected = np.array([ref._sigma_to_t(np.asarray(s), np.log(table)) for s in probes])
    assert np.allclose(sigma_to_t(probes, table), expected, atol=1e-9, rtol=0)
    assert sigma_to_t(table[[0, 7, 999]], table).tolist() == [0.0, 7.0, 999.0]
    # Between two steps: linear in log sigma.
    mid = math.exp(0.5 * (math.log(table[10]) + math.log(table[11])))
    assert sigma_to_t(np.asarray(mid), table) == pytest.approx(10.5, abs=1e-12)


@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_and_exponential_grids(rho: float) -> None:
    diffusion = GaussianDiffusion(T, "linear")
    table = model_sigmas(diffusion)
    karras = make_timeline(diffusion, 10, "karras", rho)
    ramp = np.linspace(0, 1, 10)
    hi, lo = table[-1] ** (1 / rho), table[0] ** (1 / rho)
    assert np.allclose(karras.sigmas[:-1], (hi + ramp * (lo - hi)) ** rho, rtol=1e-12)
    assert karras.sigmas[-1] == 0 and karras.sigmas[0] == pytest.approx(table[-1], rel=1e-12)
    assert karras.sigmas[-2] == pytest.approx(table[0], rel=1e-12)
    assert not karras.integer and np.allclose(karras.t, sigma_to_t(karras.sigmas[:-1], table))
    expo = make_timeline(diffusion, 10, "exponential")
    assert np.allclose(np.diff(np.log(expo.sigmas[:-1])), np.log(table[0] / table[-1]) / 9)
    trailing = make_timeline(diffusion, 10, "trailing")
    assert trailing.integer and trailing.t.tolist() == list(range(999, 0, -100))
    assert np.array_equal(trailing.sigmas[:-1], table[trailing.t.astype(int)])


def test_each_sampler_counts_its_model_calls_and_passes_float_t_off_the_grid() -> None:
    diffusion = GaussianDiffusion(T)
    for sampler, calls in (
        (Euler(steps=6), 6),
        (EulerAncestral(steps=6), 6),
        (Heun(steps=6), 11),
        (Heun(steps=1), 1),
        (UniPC(steps=6, order=3), 6),
        (DPMSolver(steps=6, sigmas="karras"), 6),
    ):
        model = ToyModel()
        sampler.sample(model, diffusion, (1, 1, 2, 2))
        assert len(model.seen) == calls == sampler.num_model_calls(T), sampler
        if sampler.sigmas == "karras" and sampler.steps > 1:  # fractional t (1 step: T - 1)
            assert all(t.dtype == torch.float32 for t in model.seen)
    model = ToyModel()
    DPMSolver(steps=6).sample(model, diffusion, (1, 1, 2, 2))  # trailing: integer steps, int64
    assert all(t.dtype == torch.long for t in model.seen)
    assert [int(t) for t in model.seen] == make_timeline(diffusion, 6, "trailing").t.tolist()


def test_bad_settings_name_their_own_arguments() -> None:
    with pytest.raises(UserError, match="^steps=0 must be a whole number >= 1"):
        Euler(steps=0)
    with pytest.raises(UserError, match="^sigmas='cosine' is unknown: use one of karras"):
        Heun(sigmas="cosine")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="^rho=0 must be a number > 0"):
        DPMSolver(rho=0)
    with pytest.raises(UserError, match="^order=4 must be 1, 2 or 3"):
        UniPC(order=4)
    with pytest.raises(UserError, match="^eta=-0.5 must be a number >= 0"):
        EulerAncestral(eta=-0.5)
    with pytest.raises(UserError, match="^eta='1' must be a number >= 0"):
        DPMSolver(eta="1")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="^s_churn=-1 must be a number >= 0"):
        Heun(s_churn=-1)
    with pytest.raises(UserError, match="^s_tmin=5 must be <= s_tmax=1"):
        Heun(s_tmin=5, s_tmax=1)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_with_the_ideal_model_every_deterministic_sampler_lands_on_the_data(
    prediction: str,
) -> None:
    """For one image the ideal model is exact and the ODE's solution is the image."""
    diffusion = GaussianDiffusion(T, "cosine", prediction_type=prediction, clip_x0=False)
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1

    class Oracle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # alpha_bar at a real t, log-sigma interpolated as the samplers map it; float64
            # (in float32, 1 - alpha_bar near sigma_0 is off by 1e-3 relative)
            table = model_sigmas(diffusion)
            sigma = np.exp(np.interp(t.double().numpy(), np.arange(T), np.log(table)))
            ab = torch.tensor(1 / (1 + sigma**2)).view(-1, 1, 1, 1)
            x, data = x_t.double(), x0.double()
            eps = (x - ab.sqrt() * data) / (1 - ab).sqrt()
            out = {"eps": eps, "x0": data, "v": ab.sqrt() * eps - (1 - ab).sqrt() * data}
            return out[prediction].float()

    for sampler in (
        Euler(steps=5),
        Heun(steps=3),
        UniPC(steps=5, order=3),
        DPMSolver(steps=5, sigmas="karras"),
    ):
        out = sampler.sample(Oracle(), diffusion, x0.shape, x_T=torch.randn(x0.shape))
        assert torch.allclose(out, x0, atol=1e-4), sampler


def test_clip_x0_bounds_the_prediction() -> None:
    """An x0-model predicting 3 everywhere: clipped, every sampler ends on 1 exactly."""

    class Three(ToyModel):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, 3.0)

    for clip in (True, False):
        diffusion = GaussianDiffusion(T, prediction_type="x0", clip_x0=clip)
        for sampler in (Euler(steps=4), Heun(steps=3), UniPC(steps=4), DPMSolver(steps=4)):
            raw = sampler.run(Three(), diffusion, torch.zeros(1, 1, 2, 2), _chain(diffusion), iter)
            assert torch.allclose(raw, torch.full_like(raw, 1.0 if clip else 3.0), atol=1e-6)


def _chain(diffusion: GaussianDiffusion):
    from ddpm_unet.models.samplers import Chain

    return Chain(diffusion, [], torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------ against diffusers
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sigmas", ["karras", "trailing"])
def test_euler_chain_matches_diffusers(prediction: str, sigmas: str) -> None:
    diffusion = GaussianDiffusion(T, "linear", prediction_type=prediction, clip_x0=False)
    ref = reference(
        diffusers.EulerDiscreteScheduler,
        diffusion,
        prediction,
        use_karras_sigmas=sigmas == "karras",
        timestep_spacing="linspace" if sigmas == "karras" else sigmas,  # karras: the full range
    )
    expected = euler_family_chain(ref, ToyModel(), 10)
    assert (ours(Euler(steps=10, sigmas=sigmas), diffusion) - expected).abs().max() < 1e-5  # type: ignore[arg-type]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sigmas", ["trailing", "leading"])
def test_euler_ancestral_chain_matches_diffusers(
    prediction: str, sigmas: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as module

    same_noise(module, monkeypatch)
    diffusion = GaussianDiffusion(T, "linear", prediction_type=prediction, clip_x0=False)
    ref = reference(
        diffusers.EulerAncestralDiscreteScheduler,
        diffusion,
        "eps" if prediction == "x0" else prediction,  # no x0 target there: fed as eps
        timestep_spacing=sigmas,
        steps_offset=0,
    )
    expected = euler_family_chain(ref, ToyModel(), 10, eps_for_x0=prediction == "x0")
    got = ours(EulerAncestral(steps=10, sigmas=sigmas), diffusion)  # type: ignore[arg-type]
    assert (got - expected).abs().max() < 1e-5


def test_euler_ancestral_eta_against_k_diffusions_formula() -> None:
    """eta != 1 (diffusers has only 1): k-diffusion's `get_ancestral_step`, in float64."""
    diffusion = GaussianDiffusion(T, "linear", clip_x0=True)
    eta, steps = 0.5, 6
    timeline = make_timeline(diffusion, steps, "karras")
    model, gen = ToyModel(), torch.Generator().manual_seed(7)
    x = start_noise().double() * math.sqrt(1 + timeline.sigmas[0] ** 2)
    for i in range(steps):
        s, s_next = timeline.sigmas[i], timeline.sigmas[i + 1]
        x_t = x / math.sqrt(1 + s**2)
        eps = model(x_t, torch.full((SHAPE[0],), timeline.t[i]))
        x0 = ((x_t - s / math.sqrt(1 + s**2) * eps) * math.sqrt(1 + s**2)).clamp(-1, 1)
        up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        down = math.sqrt(s_next**2 - up**2)
        x = x + (x - x0) / s * (down - s)
        if up > 0:
            x = x + up * torch.randn(SHAPE, generator=gen).double()
    got = ours(EulerAncestral(steps=steps, eta=eta, sigmas="karras"), diffusion)
    assert (got.double() - x.clamp(-1, 1)).abs().max() < 1e-5
    assert torch.equal(
        ours(EulerAncestral(steps=5, eta=0.0), diffusion), ours(Euler(steps=5), diffusion)
    )


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    ("schedule", "sigmas", "clip"), [("linear", "karras", False), ("cosine", "trailing", True)]
)
def test_heun_chain_matches_diffusers(
    prediction: str, schedule: str, sigmas: str, clip: bool
) -> None:
    diffusion = GaussianDiffusion(T, schedule, prediction_type=prediction, clip_x0=clip)
    ref = reference(
        diffusers.HeunDiscreteScheduler,
        diffusion,
        prediction,
        use_karras_sigmas=sigmas == "karras",
        timestep_spacing="linspace" if sigmas == "karras" else sigmas,
        clip_sample=clip,
        clip_sample_range=1.0,
    )
    model = ToyModel()
    expected = euler_family_chain(ref, model, 10)
    assert len(model.seen) == 19 == Heun(steps=10).num_model_calls(T)
    got = ours(Heun(steps=10, sigmas=sigmas), diffusion)  # type: ignore[arg-type]
    assert (got - expected).abs().max() < 1e-5


def test_heun_churn_against_edms_algorithm_2() -> None:
    """With churn (diffusers' Heun has none): Karras et al. Algorithm 2 / k-diffusion's
    `sample_heun` in float64, the raised noise level's t log-sigma interpolated."""
    diffusion = GaussianDiffusion(T, "linear", clip_x0=False)
    steps, churn, tmin, tmax, s_noise = 5, 2.0, 0.05, 20.0, 1.003
    tl = make_timeline(diffusion, steps, "karras")
    table = model_sigmas(diffusion)
    model, gen = ToyModel(), torch.Generator().manual_seed(7)

    def denoised(x: torch.Tensor, s: float) -> torch.Tensor:
        x_t = x / math.sqrt(1 + s**2)
        t = float(np.interp(math.log(s), np.log(table), np.arange(T)))
        return x - s * model(x_t, torch.full((SHAPE[0],), t)).double()  # eps target

    x = start_noise().double() * math.sqrt(1 + tl.sigmas[0] ** 2)
    for i in range(steps):
        s, s_next = tl.sigmas[i], tl.sigmas[i + 1]
        gamma = min(churn / steps, math.sqrt(2) - 1) if tmin <= s <= tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + torch.randn(SHAPE, generator=gen).double() * s_noise * math.sqrt(
                s_hat**2 - s**2
            )
        d = (x - denoised(x, s_hat)) / s_hat
        if s_next == 0:
            x = x + (s_next - s_hat) * d
        else:
            x_2 = x + (s_next - s_hat) * d
            d_2 = (x_2 - denoised(x_2, s_next)) / s_next
            x = x + (s_next - s_hat) * (d + d_2) / 2
    sampler = Heun(steps, "karras", s_churn=churn, s_tmin=tmin, s_tmax=tmax, s_noise=s_noise)
    assert (ours(sampler, diffusion).double() - x.clamp(-1, 1)).abs().max() < 1e-5


def multistep_chain(ref, steps: int, our_t: np.ndarray) -> torch.Tensor:
    """diffusers' loop for DPM-Solver++ / UniPC (on x_t), the network called at our t."""
    ref.set_timesteps(steps)
    ref.set_begin_index(0)  # rounded Karras t repeat (cosine: 999, 999, ...): no lookup by t
    assert ref.timesteps.tolist() == np.round(our_t).astype(int).tolist()
    model, x = ToyModel(), start_noise()
    for t, t_net in zip(ref.timesteps, our_t, strict=True):
        x = ref.step(model(x, torch.full((SHAPE[0],), float(t_net))), t, x).prev_sample
    return x.clamp(-1, 1)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    ("eta", "schedule", "sigmas", "clip"),
    [
        (0.0, "linear", "karras", False),
        (0.0, "cosine", "karras", True),
        (1.0, "cosine", "trailing", True),
        (1.0, "linear", "karras", False),
    ],
)
def test_dpm_solver_chain_matches_diffusers(
    prediction: str,
    eta: float,
    schedule: str,
    sigmas: str,
    clip: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """eta = 0: `dpmsolver++` ("DPM++ 2M", on Karras sigmas "DPM++ 2M Karras"); eta = 1:
    `sde-dpmsolver++` ("DPM++ 2M SDE") with the same step noise (diffusers draws one more, unused,
    at the last step, where the noise level is 0)."""
    from diffusers.schedulers import scheduling_dpmsolver_multistep as module

    diffusion = GaussianDiffusion(T, schedule, prediction_type=prediction, clip_x0=clip)
    ref = reference(
        diffusers.DPMSolverMultistepScheduler,
        diffusion,
        prediction,
        algorithm_type="sde-dpmsolver++" if eta else "dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_karras_sigmas=sigmas == "karras",
        timestep_spacing="trailing" if sigmas == "trailing" else "linspace",
        thresholding=clip,
        sample_max_value=1.0,
    )
    gen = torch.Generator().manual_seed(7)
    monkeypatch.setattr(  # diffusers' step noise drawn as ours: float32, from our generator
        module, "randn_tensor", lambda shape, **_: torch.randn(shape, generator=gen)
    )
    expected = multistep_chain(ref, 10, make_timeline(diffusion, 10, sigmas).t)  # type: ignore[arg-type]
    got = ours(DPMSolver(steps=10, sigmas=sigmas, eta=eta), diffusion)  # type: ignore[arg-type]
    assert (got - expected).abs().max() < 1e-5
    if eta:  # the noise does change the chain
        assert (got - ours(DPMSolver(steps=10, sigmas=sigmas), diffusion)).abs().max() > 1e-2  # type: ignore[arg-type]


def test_dpm_solver_eta_against_k_diffusions_formula() -> None:
    """0 < eta < 1 (diffusers has only 1): k-diffusion's `sample_dpmpp_2m_sde` (midpoint), in
    float64."""
    diffusion = GaussianDiffusion(T, "cosine", clip_x0=True)
    eta, steps = 0.5, 6
    tl = make_timeline(diffusion, steps, "trailing")
    model, gen = ToyModel(), torch.Generator().manual_seed(7)
    x = start_noise().double() * math.sqrt(1 + tl.sigmas[0] ** 2)
    old = h_last = None
    for i in range(steps):
        s, s_next = tl.sigmas[i], tl.sigmas[i + 1]
        x_t = x / math.sqrt(1 + s**2)
        eps = model(x_t, torch.full((SHAPE[0],), int(tl.t[i]))).double()
        denoised = ((x_t - s / math.sqrt(1 + s**2) * eps) * math.sqrt(1 + s**2)).clamp(-1, 1)
        if s_next == 0:
            x = denoised
        else:
            h = -math.log(s_next) + math.log(s)
            eta_h = eta * h
            x = s_next / s * math.exp(-eta_h) * x + -math.expm1(-h - eta_h) * denoised
            if old is not None:
                x = x + 0.5 * -math.expm1(-h - eta_h) * (h / h_last) * (denoised - old)
            noise = torch.randn(SHAPE, generator=gen).double()
            x = x + noise * s_next * math.sqrt(-math.expm1(-2 * eta_h))
            h_last = h
        old = denoised
    got = ours(DPMSolver(steps=steps, eta=eta), diffusion)
    assert (got.double() - x.clamp(-1, 1)).abs().max() < 1e-5


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    ("schedule", "sigmas", "order", "clip"),
    [
        ("linear", "trailing", 2, False),
        ("cosine", "trailing", 3, True),
        ("linear", "karras", 3, False),
        ("cosine", "karras", 1, False),
    ],
)
def test_unipc_chain_matches_diffusers(
    prediction: str, schedule: str, sigmas: str, order: int, clip: bool
) -> None:
    diffusion = GaussianDiffusion(T, schedule, prediction_type=prediction, clip_x0=clip)
    ref = reference(
        diffusers.UniPCMultistepScheduler,
        diffusion,
        prediction,
        solver_order=order,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
        use_karras_sigmas=sigmas == "karras",
        timestep_spacing="trailing" if sigmas == "trailing" else "linspace",
        thresholding=clip,
        sample_max_value=1.0,
    )
    expected = multistep_chain(ref, 10, make_timeline(diffusion, 10, sigmas).t)  # type: ignore[arg-type]
    got = ours(UniPC(steps=10, order=order, sigmas=sigmas), diffusion)  # type: ignore[arg-type]
    assert (got - expected).abs().max() < 1e-5


def test_the_integer_spacings_keep_ddim_and_the_timeline_consistent() -> None:
    """DDIM with eta = 0 is Euler on the same integer steps, both exact to 1e-5."""
    diffusion = GaussianDiffusion(T, "linear", clip_x0=False)
    ddim = ours(DDIM(steps=10, spacing="trailing"), diffusion)
    euler = ours(Euler(steps=10, sigmas="trailing"), diffusion)
    assert (ddim - euler).abs().max() < 1e-5
