"""Samplers and the forward process cross-checked against diffusers' schedulers (plain maths, no
weights, no network), for eps, x0 and v models.

Our chains run in float32 with float64 coefficients. The reference is diffusers, configured to
our betas (`trained_betas`), target, clipping and timestep spacing, and run on the same model
(`ToyModel`, a fixed deterministic function of (x, t)) and the same noise. For DDPM and DDIM the
reference runs in float64 (its `alphas_cumprod` replaced by our float64 table, images in
float64): diffusers itself computes in float32 and loses DDIM's direction term to cancellation
in the cosine eta=1 case, which is the bug our float64 coefficients fix. DPM-Solver++ in
diffusers casts to float32 inside `step`, so that reference is float32.

Conventions that differ, and how the tests handle them:
* timestep spacing: diffusers' DDIM steps from `t` to `t - T // steps` whatever the list of
  timesteps, we step to the next visited timestep. They agree for `leading` and `trailing`
  spacing when `steps` divides `T` (tested); for `linspace` the gaps are uneven, so that chain is
  checked against a float64 implementation of eq. 12 on our timesteps instead.
* DDIM clipping: diffusers recomputes eps from the clipped x0 only with
  `use_clipped_model_output=True`; we always do (it keeps the update on the DDIM path).
* DDPM variance: our `beta` is diffusers' `fixed_large`, `posterior` is `fixed_small`.
* DPM-Solver++ clipping: diffusers has no static clip; `thresholding=True` with
  `sample_max_value=1.0` clamps the threshold to 1, which is the same [-1, 1] clip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from ddpm_unet.models.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_unet.models.samplers import DDIM, DDPM, DPMSolver, spaced_timesteps  # noqa: E402
from ddpm_unet.utils.errors import UserError  # noqa: E402

DIFFUSERS_TARGET = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SHAPE = (3, 2, 4, 4)


class ToyModel(nn.Module):
    """A fixed, deterministic function of `(x, t)`: a linear map of `x` (mixing channels and
    neighbouring pixels) plus a term in `t`. Works in any float dtype."""

    def __init__(self, num_timesteps: int) -> None:
        super().__init__()
        self.num_timesteps = num_timesteps
        self.dummy = nn.Parameter(torch.zeros(()))  # samplers read the device from parameters

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = (t.to(x.dtype) / self.num_timesteps).view(-1, 1, 1, 1)
        return 0.6 * x - 0.2 * x.flip(1) + 0.1 * x.roll(1, dims=-1) + 0.3 * s - 0.1


def make_diffusion(schedule: str, prediction: str, clip: bool, T: int, **kw) -> GaussianDiffusion:
    return GaussianDiffusion(T, schedule, prediction_type=prediction, clip_x0=clip, **kw)


def float64_reference(scheduler, diffusion: GaussianDiffusion):
    """Make a diffusers DDPM/DDIM scheduler compute in float64 with our exact `alpha_bar`."""
    scheduler.alphas_cumprod = diffusion.alpha_bar64.clone()
    scheduler.alphas = 1 - diffusion.betas64.clone()
    scheduler.betas = diffusion.betas64.clone()
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def start_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ the forward process
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_and_targets_match_diffusers(schedule: str, prediction: str) -> None:
    diffusion = make_diffusion(schedule, prediction, True, 1000)
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        trained_betas=diffusion.betas64.numpy(),
        prediction_type=DIFFUSERS_TARGET[prediction],
    )
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 1, 4, 4, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([0, 1, 10, 250, 500, 800, 998, 999])
    assert torch.allclose(diffusion.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), atol=1e-5)
    expected = {"eps": noise, "x0": x0, "v": ref.get_velocity(x0, noise, t)}[prediction]
    assert torch.allclose(diffusion.target(x0, t, noise), expected, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_split_prediction_inverts_the_target(prediction: str) -> None:
    """The exact target of the forward process gives back the x0 and eps that made x_t."""
    diffusion = make_diffusion("cosine", prediction, False, 1000)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 4, 4, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    for step in (0, 300, 900):
        t = torch.full((2,), step)
        x_t = diffusion.q_sample(x0, t, noise)
        got_x0, got_eps = diffusion.split_prediction(diffusion.target(x0, t, noise), x_t, step)
        assert torch.allclose(got_x0, x0, atol=2e-4), step
        assert torch.allclose(got_eps, noise, atol=2e-4), step


# ------------------------------------------------------------------------ DDPM
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(("variance", "clip"), [("beta", True), ("posterior", False)])
def test_ddpm_chain_matches_diffusers(
    prediction: str, variance: str, clip: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    T = 100
    diffusion = make_diffusion("cosine", prediction, clip, T, variance=variance)
    model = ToyModel(T)
    ours = DDPM().sample(
        model, diffusion, SHAPE, torch.Generator().manual_seed(5), x_T=start_noise()
    )

    ref = float64_reference(
        diffusers.DDPMScheduler(
            num_train_timesteps=T,
            trained_betas=diffusion.betas64.numpy(),
            prediction_type=DIFFUSERS_TARGET[prediction],
            variance_type={"beta": "fixed_large", "posterior": "fixed_small"}[variance],
            clip_sample=clip,
            clip_sample_range=1.0,
        ),
        diffusion,
    )
    # diffusers draws its noise in the images' dtype (float64 here); ours is float32 from the
    # same generator: give diffusers the same draws, cast.
    from diffusers.schedulers import scheduling_ddpm

    def same_noise(shape, generator=None, device=None, dtype=None, **_):
        return torch.randn(shape, generator=generator).to(dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", same_noise)
    ref.set_timesteps(T)
    assert ref.timesteps.tolist() == DDPM().timesteps(T)
    x = start_noise().double()
    gen = torch.Generator().manual_seed(5)
    for t in ref.timesteps:
        out = model(x, torch.full((SHAPE[0],), int(t)))
        x = ref.step(out, t, x, generator=gen).prev_sample
    assert (ours.double() - x.clamp(-1, 1)).abs().max() < 1e-5


# ------------------------------------------------------------------------ DDIM
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    ("schedule", "spacing", "steps", "eta", "clip"),
    [
        ("linear", "leading", 10, 0.0, True),
        ("linear", "trailing", 20, 0.5, False),
        # The cancellation case: the first step 999 -> 899 of a 10-step cosine chain
        # with eta = 1 has a direction coefficient of 2.8e-4, which float32 computes as 0.
        ("cosine", "trailing", 10, 1.0, True),
        ("cosine", "trailing", 10, 1.0, False),
    ],
)
def test_ddim_chain_matches_diffusers_in_float64(
    prediction: str, schedule: str, spacing: str, steps: int, eta: float, clip: bool
) -> None:
    T = 1000
    diffusion = make_diffusion(schedule, prediction, clip, T)
    model = ToyModel(T)
    sampler = DDIM(steps=steps, eta=eta, spacing=spacing)  # type: ignore[arg-type]
    ours = sampler.sample(
        model, diffusion, SHAPE, torch.Generator().manual_seed(3), x_T=start_noise()
    )

    ref = float64_reference(
        diffusers.DDIMScheduler(
            num_train_timesteps=T,
            trained_betas=diffusion.betas64.numpy(),
            prediction_type=DIFFUSERS_TARGET[prediction],
            clip_sample=clip,
            clip_sample_range=1.0,
            set_alpha_to_one=True,  # after the last step: the clean data, as ours
            timestep_spacing=spacing,
            steps_offset=0,
        ),
        diffusion,
    )
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == sampler.timesteps(T)
    x = start_noise().double()
    gen = torch.Generator().manual_seed(3)
    for t in ref.timesteps:
        out = model(x, torch.full((SHAPE[0],), int(t)))
        # Our noise: float32 draws from the same generator (none when sigma = 0: the last step).
        noise = torch.randn(SHAPE, generator=gen).double() if eta > 0 else None
        x = ref.step(
            out, t, x, eta=eta, use_clipped_model_output=True, variance_noise=noise
        ).prev_sample
    assert (ours.double() - x.clamp(-1, 1)).abs().max() < 1e-5


def test_ddim_cosine_eta_one_first_step_keeps_its_direction_term() -> None:
    """The defect of the issue, step by step: the first step 999 -> 888 of a 10-step cosine
    chain with eta = 1 has a direction coefficient of 2.8e-4, which the former float32 maths
    computed as 0; our step applies the float64 value (read off the step's output)."""
    diffusion = GaussianDiffusion(1000, "cosine", clip_x0=False)
    sampler = DDIM(steps=10, eta=1.0)
    assert sampler.timesteps(1000)[:2] == [999, 888]
    a_t, a_s = diffusion.alpha_bar64[999], diffusion.alpha_bar64[888]
    sigma2 = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    true_coef = math.sqrt(1 - a_s - sigma2)
    assert true_coef == pytest.approx(2.78e-4, rel=1e-2)
    # Why float32 loses it (a float64 fact, the same on every IEEE-754 machine): the term under
    # the root, 1 - a_s - sigma^2 ~ 7.7e-8, is below float32's spacing of numbers near 1
    # (2^-23 ~ 1.19e-7), so float32 gets 0 or one rounding step of 1, i.e. nothing of the value.
    assert true_coef**2 < torch.finfo(torch.float32).eps

    class ZeroX0(nn.Module):
        """eps = x / sqrt(1 - a_bar): x0 = 0, which isolates the direction term."""

        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x / diffusion.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)

    from ddpm_unet.models.samplers import Chain

    chain = Chain(diffusion, sampler.timesteps(1000), torch.Generator().manual_seed(0))
    x = torch.ones(1, 1, 2, 2)
    out = sampler.step(chain, 0, x, ZeroX0()(x, torch.tensor([999])))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    direction = out - math.sqrt(sigma2) * noise
    expected = true_coef / math.sqrt(1 - float(a_t))
    assert direction.mean().item() == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_linspace_chain_matches_a_float64_eq12(prediction: str) -> None:
    """The issue's chain: 10 cosine steps with eta = 1 and `linspace` spacing (999, 888, ...:
    uneven gaps, which diffusers' DDIM does not follow), against eq. 12 in float64 on our steps."""
    T, steps, eta = 1000, 10, 1.0
    # Clipped, as by default: unclipped, the toy eps-model's x0 at t = 999 is ~1e3 and the chain
    # amplifies rounding (any two float implementations part there).
    diffusion = make_diffusion("cosine", prediction, True, T)
    model = ToyModel(T)
    sampler = DDIM(steps=steps, eta=eta)
    ours = sampler.sample(
        model, diffusion, SHAPE, torch.Generator().manual_seed(4), x_T=start_noise()
    )
    ts = sampler.timesteps(T)
    assert ts == np.linspace(0, T - 1, steps).round()[::-1].astype(int).tolist()
    ab = diffusion.alpha_bar64
    x = start_noise().double()
    gen = torch.Generator().manual_seed(4)
    for i, t in enumerate(ts):
        a = ab[t]
        a_s = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        out = model(x, torch.full((SHAPE[0],), t))
        if prediction == "eps":
            eps, x0 = out, (x - (1 - a).sqrt() * out) / a.sqrt()
        elif prediction == "x0":
            x0, eps = out, (x - a.sqrt() * out) / (1 - a).sqrt()
        else:
            x0, eps = a.sqrt() * x - (1 - a).sqrt() * out, a.sqrt() * out + (1 - a).sqrt() * x
        x0 = x0.clamp(-1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        sigma = eta * ((1 - a_s) / (1 - a) * (1 - a / a_s)).sqrt()
        x = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps
        if sigma > 0:
            x = x + sigma * torch.randn(SHAPE, generator=gen).double()
    assert (ours.double() - x.clamp(-1, 1)).abs().max() < 1e-5


def test_ddim_with_the_true_noise_recovers_x0() -> None:
    """With the ideal eps-model a deterministic DDIM chain ends exactly on x0."""
    diffusion = GaussianDiffusion(1000)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)

    class Oracle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a = diffusion.sqrt_alpha_bar[t].view(-1, 1, 1, 1)
            return (x_t - a * x0) / diffusion.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)

    out = DDIM(steps=20).sample(Oracle(), diffusion, x0.shape, x_T=noise)
    assert torch.allclose(out, x0, atol=1e-4)


# ------------------------------------------------------------------------ DPM-Solver++
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    ("schedule", "steps", "clip"),
    [("linear", 10, False), ("cosine", 20, True), ("cosine", 12, False)],
)
def test_dpm_solver_chain_matches_diffusers(
    prediction: str, schedule: str, steps: int, clip: bool
) -> None:
    T = 1000
    diffusion = make_diffusion(schedule, prediction, clip, T)
    model = ToyModel(T)
    sampler = DPMSolver(steps=steps)
    ours = sampler.sample(model, diffusion, SHAPE, x_T=start_noise())

    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        trained_betas=diffusion.betas64.numpy(),
        prediction_type=DIFFUSERS_TARGET[prediction],
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="trailing",
        thresholding=clip,
        sample_max_value=1.0,  # with thresholding: the threshold is clamped to 1, a [-1, 1] clip
    )
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == spaced_timesteps(T, steps, "trailing")
    x = start_noise()
    for t in ref.timesteps:
        x = ref.step(model(x, torch.full((SHAPE[0],), int(t))), t, x).prev_sample
    # diffusers works in float32 (schedule and images); ours in float64 coefficients.
    assert (ours - x.clamp(-1, 1)).abs().max() < 1e-5


def test_dpm_solver_reaches_ddpm_quality_of_an_ideal_model_in_few_steps() -> None:
    """With the ideal model for one image every sampler must land on it; DPM-Solver++ does in
    5 steps, and its second-order steps use the previous prediction (memory)."""
    diffusion = GaussianDiffusion(1000, "cosine")
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1

    class Oracle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a = diffusion.sqrt_alpha_bar[t].view(-1, 1, 1, 1)
            return (x_t - a * x0) / diffusion.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)

    out = DPMSolver(steps=5).sample(Oracle(), diffusion, x0.shape, torch.Generator())
    assert torch.allclose(out, x0, atol=1e-4)


# ------------------------------------------------------------------------ the interface
def test_timestep_spacings() -> None:
    assert spaced_timesteps(1000, 10, "leading") == list(range(900, -1, -100))
    assert spaced_timesteps(1000, 10, "trailing") == list(range(999, 0, -100))
    assert spaced_timesteps(1000, 1, "linspace") == [999]
    for spacing in ("linspace", "leading", "trailing"):
        for steps in (1, 2, 7, 50, 333, 999, 1000):
            ts = spaced_timesteps(1000, steps, spacing)  # type: ignore[arg-type]
            assert len(ts) == len(set(ts)) == steps, (spacing, steps)
            assert ts == sorted(ts, reverse=True) and ts[-1] >= 0 and ts[0] <= 999


def test_samplers_count_their_model_calls_and_describe_themselves() -> None:
    diffusion = GaussianDiffusion(50)
    for sampler, calls in ((DDPM(), 50), (DDIM(steps=7), 7), (DPMSolver(steps=5), 5)):
        model = ToyModel(50)
        seen: list[int] = []
        original = model.forward

        def counting(x, t, original=original, seen=seen):
            seen.append(int(t[0]))
            return original(x, t)

        model.forward = counting  # type: ignore[method-assign]
        sampler.sample(model, diffusion, (1, 1, 4, 4))
        assert len(seen) == calls == sampler.num_model_calls(50)
        expected = spaced_timesteps(50, 5, "trailing") if sampler.name == "dpm_solver" else None
        assert seen == (expected or sampler.timesteps(50))  # type: ignore[attr-defined]
    assert DDIM(steps=7, eta=1.0).settings() == {
        "sampler": "ddim",
        "steps": 7,
        "eta": 1.0,
        "spacing": "linspace",
    }
    assert DPMSolver().settings()["steps"] == 20


def test_bad_sampler_settings_name_the_value_in_the_samplers_own_words() -> None:
    with pytest.raises(UserError, match="^steps=0 must be a whole number >= 1"):
        DDIM(steps=0)
    with pytest.raises(UserError, match="^eta=-1"):
        DDIM(eta=-1)
    with pytest.raises(UserError, match="^spacing='even' is unknown"):
        DDIM(spacing="even")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="^sigmas='even' is unknown"):
        DPMSolver(sigmas="even")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="steps=50 must be between 1 and num_timesteps=20"):
        DPMSolver(steps=50).sample(ToyModel(20), GaussianDiffusion(20), (1, 1, 4, 4))


def test_sampler_modules_hold_no_config_keys() -> None:
    """Issue 20: samplers speak their own argument names, not `sampler.steps=` (C1)."""
    import re
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "src" / "ddpm_unet" / "models" / "samplers"
    pattern = re.compile(r"(model|data|trainer|sampler|callbacks)\.[a-z_]+=")
    for path in folder.glob("*.py"):
        assert not pattern.search(path.read_text()), path


def test_hydra_builds_each_sampler_config() -> None:
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ddpm_unet.models.samplers import DPMSolverSDE, Euler, EulerAncestral, Heun, UniPC

    configs = Path(__file__).resolve().parents[1] / "configs" / "sampler"
    built = {p.stem: instantiate(OmegaConf.load(p)) for p in sorted(configs.glob("*.yaml"))}
    assert isinstance(built["ddpm"], DDPM)
    assert built["ddim"] == DDIM(steps=50, eta=0.0)
    assert built["dpm_solver"] == DPMSolver(steps=20)
    assert built["dpm_solver_sde"] == DPMSolverSDE(steps=20) and built["dpm_solver_sde"].eta == 1
    assert built["euler"] == Euler()
    assert built["euler_ancestral"] == EulerAncestral()
    assert built["heun"] == Heun()
    assert built["unipc"] == UniPC()
    assert set(built) == {
        "ddpm",
        "ddim",
        "dpm_solver",
        "dpm_solver_sde",
        "euler",
        "euler_ancestral",
        "heun",
        "unipc",
    }


def test_the_default_sampler_takes_objects_without_keys() -> None:
    from ddpm_unet.models.samplers import sampler_or_default

    default = DDIM(steps=7)
    assert sampler_or_default(None, default) is default
    assert sampler_or_default(DPMSolver(), default) == DPMSolver()
    with pytest.raises(UserError, match=r"^sampler='ddim' is not a sampler"):
        sampler_or_default("ddim", default)
    # The constructor's own error, in its own argument names.
    with pytest.raises(UserError, match="^steps=0 must be"):
        DDIM(steps=0)
