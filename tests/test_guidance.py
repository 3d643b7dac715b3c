"""Class labels and classifier-free guidance in generation (`ddpm_unet.generation.guidance`).

The guidance combination against diffusers' formula, the network calls it makes (one batched
call, none wasted at w = 0 and w = 1), `nfe` counted, every sampler with guidance giving one path
for eps, x0 and v networks, images that depend on (seed, sampler, w, label, i) only, the label
and scale checks, and the commands' refusals for an unconditional checkpoint.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ddpm_unet import evaluate, sample
from ddpm_unet.generation.core import FixedBatch, generate_images
from ddpm_unet.generation.guidance import (
    GuidedModel,
    ModelCalls,
    check_guidance_scale,
    guide,
    order_by_class,
    resolve_labels,
)
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers import DDIM
from ddpm_unet.models.unet import UNet
from ddpm_unet.utils.errors import UserError
from tests.conftest import CONFIG_DIR, compose_config
from tests.fidelity_helpers import random_weights_file

SHAPE = (1, 8, 8)
K = 3  # classes of the test networks


def conditional_net() -> nn.Module:
    """A tiny class-conditional UNet."""
    torch.manual_seed(0)
    net = UNet(
        1,
        n_channels=16,
        ch_mults=(1, 2),
        is_attn=(False, False),
        n_blocks=1,
        n_groups=8,
        num_classes=K,
    )
    with torch.no_grad():  # zero-initialised parts (e.g. a class embedding) made to matter
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    return net.eval()


class Recorder(nn.Module):
    """Returns `y` (as a constant image per row) and records each call's batch and labels."""

    num_classes = K

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.calls: list[tuple[int, list[int] | None]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        self.calls.append((x.shape[0], None if y is None else y.tolist()))
        value = torch.zeros(x.shape[0]) if y is None else y.float()
        return value[:, None, None, None].expand_as(x) * self.w


# ------------------------------------------------------------------------------------------------
# the combination and its calls
# ------------------------------------------------------------------------------------------------
def test_guidance_equals_diffusers_formula_in_one_batched_call() -> None:
    from diffusers.pipelines.dit.pipeline_dit import DiTPipeline

    # diffusers' class-conditional pipeline (DiT) guides with exactly this line:
    assert "half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)" in inspect.getsource(
        DiTPipeline.__call__
    )
    net = conditional_net()
    x, t = torch.randn(4, *SHAPE), torch.tensor([3, 3, 7, 7])
    y = torch.tensor([0, 2, 1, 0])
    with torch.no_grad():
        cond_eps = net(x, t, y)
        uncond_eps = net(x, t, torch.full_like(y, K))
        for guidance_scale in (0.0, 1.0, 1.5, 4.0):
            half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)  # diffusers'
            model = GuidedModel(net, y, guidance_scale, K)
            torch.testing.assert_close(model(x, t), half_eps, rtol=1e-5, atol=1e-5)
            assert torch.equal(guide(cond_eps, uncond_eps, guidance_scale), half_eps)


def test_guided_model_makes_one_call_and_counts_model_calls() -> None:
    net, x, t = Recorder(), torch.zeros(2, *SHAPE), torch.zeros(2, dtype=torch.long)
    y = torch.tensor([1, 2])
    calls = ModelCalls(images=2)
    assert torch.equal(GuidedModel(net, y, 1.0, K, calls)(x, t)[:, 0, 0, 0], torch.tensor([1.0, 2]))
    assert torch.equal(GuidedModel(net, y, 0.0, K, calls)(x, t)[:, 0, 0, 0], torch.tensor([3.0, 3]))
    # w = 2: one call of 2N images (labels, then the no-class token); 3 + 2 * (y - 3) = 2y - 3
    assert torch.equal(
        GuidedModel(net, y, 2.0, K, calls)(x, t)[:, 0, 0, 0], torch.tensor([-1.0, 1])
    )
    GuidedModel(net, None, None, None, calls)(x, t)  # unconditional: net(x, t) as before
    assert net.calls == [(2, [1, 2]), (2, [3, 3]), (4, [1, 2, 3, 3]), (2, None)]
    assert calls.nfe == 4  # 4 calls of the sampler per image

    # Through a sampler: `nfe` is counted, whatever the batch size.
    counted = ModelCalls()
    generate_images(
        Recorder(),
        GaussianDiffusion(20),
        DDIM(steps=5),
        range(5),
        0,
        SHAPE,
        2,
        batch_size=2,
        labels=[0, 1, 2, 0, 1],
        guidance_scale=3.0,
        calls=counted,
    )
    assert counted.images == 5 and counted.nfe == 5


def test_fixed_batch_cuts_and_pads_labels_with_the_images() -> None:
    net = Recorder()
    out = FixedBatch(net, 4)(torch.zeros(6, *SHAPE), torch.zeros(6), torch.arange(6) % K)
    assert net.calls == [(4, [0, 1, 2, 0]), (4, [1, 2, 1, 1])]  # padded with its first row
    assert torch.equal(out[:, 0, 0, 0], (torch.arange(6) % K).float())


# ------------------------------------------------------------------------------------------------
# every sampler, eps / x0 / v: one path for one w
# ------------------------------------------------------------------------------------------------
class AsPrediction(nn.Module):
    """An eps network's output expressed as `x0` or `v` (the same model, another target)."""

    def __init__(self, eps_net: nn.Module, diffusion: GaussianDiffusion) -> None:
        super().__init__()
        self.eps_net, self.diffusion = eps_net, diffusion
        self.num_classes = eps_net.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        eps = self.eps_net(x, t, y).double()
        a = self.diffusion.alpha_bar64.to(x.device)[t.long()][:, None, None, None]
        x0 = (x.double() - (1 - a).sqrt() * eps) / a.sqrt()
        kind = self.diffusion.prediction_type
        out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[kind]
        return out.float()


def every_sampler() -> list:
    """One of each `configs/sampler/` file, with few steps."""
    samplers = []
    for path in sorted((CONFIG_DIR / "sampler").glob("*.yaml")):
        config = OmegaConf.load(path)
        if "steps" in config:
            config.steps = 5
        samplers.append(instantiate(config))
    return samplers


def test_every_sampler_with_guidance_follows_one_path_for_eps_x0_and_v() -> None:
    eps_net, labels = conditional_net(), [0, 1, 2, 1]
    for sampler in every_sampler():
        images = {}
        for kind in ("eps", "x0", "v"):
            diffusion = GaussianDiffusion(20, prediction_type=kind, clip_x0=False)
            net = eps_net if kind == "eps" else AsPrediction(eps_net, diffusion)
            images[kind] = generate_images(
                net, diffusion, sampler, range(4), 0, SHAPE, 4, labels=labels, guidance_scale=2.5
            )
        for kind in ("x0", "v"):
            torch.testing.assert_close(
                images[kind], images["eps"], atol=2e-4, rtol=0, msg=f"{sampler.name} {kind}"
            )


# ------------------------------------------------------------------------------------------------
# image i depends on (seed, sampler, w, label i, i) only
# ------------------------------------------------------------------------------------------------
def test_images_with_labels_do_not_depend_on_batches_and_follow_label_and_scale() -> None:
    net, diffusion, sampler = conditional_net(), GaussianDiffusion(20), DDIM(steps=4, eta=1.0)
    labels = resolve_labels("balanced", 10, K)

    def make(indices, batch_size, w=2.0, labels_of=labels):
        picked = [int(labels_of[i]) for i in indices]
        return generate_images(
            net,
            diffusion,
            sampler,
            indices,
            3,
            SHAPE,
            4,
            batch_size=batch_size,
            labels=picked,
            guidance_scale=w,
        )

    whole, threes = make(range(10), 10), make(range(10), 3)
    assert torch.equal(whole, threes)  # bit for bit
    assert torch.equal(make([9, 2, 5], 2), whole[[9, 2, 5]])
    other_label = make(range(10), 10, labels_of=(labels + 1) % K)
    assert not torch.equal(other_label[0], whole[0])
    assert not torch.equal(make(range(10), 10, w=1.0)[0], whole[0])
    # w = 0 is the no-class model: the labels no longer matter.
    assert torch.equal(make(range(10), 10, w=0.0), make(range(10), 10, w=0.0, labels_of=labels * 0))


# ------------------------------------------------------------------------------------------------
# labels and scale: checked before any work
# ------------------------------------------------------------------------------------------------
def test_labels_balanced_cycled_and_by_name() -> None:
    assert resolve_labels(None, 7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert resolve_labels("balanced", 4, 10).dtype == np.int64
    assert resolve_labels([4, 1], 5, 10).tolist() == [4, 1, 4, 1, 4]
    assert resolve_labels(2, 3, 10).tolist() == [2, 2, 2]
    assert resolve_labels(["dog", "cat"], 3, 2, ["cat", "dog"]).tolist() == [1, 0, 1]
    assert resolve_labels(None, 3, None) is None  # unconditional: no labels
    assert order_by_class(np.array([2, 0, 1, 0, 2]), 5).tolist() == [1, 3, 2, 0, 4]


@pytest.mark.parametrize(
    ("labels", "classes", "message"),
    [
        ("balanced", None, r"labels=balanced needs a class-conditional model"),
        ([10], 10, r"class id 10 is out of range: this model has 10 classes, ids 0 to 9"),
        ([-1], 10, r"class id -1 is out of range"),
        (["bird"], 2, r"class 'bird' is unknown: use one of \['cat', 'dog'\]"),
        ([], 2, r"labels=\[\] names no class"),
    ],
)
def test_bad_labels_are_refused(labels, classes, message) -> None:
    with pytest.raises(UserError, match=message):
        resolve_labels(labels, 4, classes, ["cat", "dog"] if classes == 2 else None)


def test_grid_has_one_row_per_class() -> None:
    images = torch.arange(5.0).reshape(5, 1, 1, 1) / 10  # image i is the value i / 10
    rows, length = sample.class_rows(images, np.array([1, 0, 1, 2, 1]))
    white = 1.0
    assert length == 3
    assert rows.flatten().tolist() == pytest.approx(
        [0.1, white, white, 0.0, 0.2, 0.4, 0.3, white, white]
    )


def test_guidance_scale_checks() -> None:
    assert check_guidance_scale(None, 10) == 1.0 and check_guidance_scale(None, None) is None
    assert check_guidance_scale(0, 10) == 0.0
    with pytest.raises(UserError, match=r"guidance_scale=2 needs a class-conditional model"):
        check_guidance_scale(2, None)
    with pytest.raises(UserError, match=r"guidance_scale=-1 must be a number >= 0"):
        check_guidance_scale(-1, 10)
    with pytest.raises(UserError, match=r"guidance_scale='high' is not a number"):
        check_guidance_scale("high", 10)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("labels=balanced", "labels=balanced needs a class-conditional model"),
        ("guidance_scale=2", "guidance_scale=2 needs a class-conditional model"),
    ],
)
def test_sample_and_eval_refuse_classes_for_an_unconditional_checkpoint(
    checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    override: str,
    message: str,
) -> None:
    args = [
        f"ckpt_path={checkpoint}",
        "num_samples=4",
        "sampler=ddim",
        "sampler.steps=2",
        "progress=false",
        override,
    ]
    with pytest.raises(UserError, match=message):
        sample.run(compose_config("sample", args, tmp_path / "s"))
    assert not (tmp_path / "s" / "shards").exists()  # nothing written
    eval_args = [
        *args,
        "metrics.isc=false",
        "metrics.kid=false",
        "inception_download=false",
        "num_reference=4",
        f"inception_weights={random_weights_file(tmp_path_factory)}",
    ]
    with pytest.raises(UserError, match=message):
        evaluate.run(compose_config("eval", eval_args, tmp_path / "e"))


# ------------------------------------------------------------------------------------------------
# the commands on a class-conditional checkpoint (needs the UNet's classes, contract C3)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny digits run of conftest's `checkpoint`, with `model.net.num_classes=10`."""
    from hydra.core.global_hydra import GlobalHydra

    from ddpm_unet.train import fit
    from tests.conftest import TINY_OVERRIDES, compose_train

    out = tmp_path_factory.mktemp("train_cond")
    overrides = [
        *TINY_OVERRIDES,
        "model.net.num_classes=10",
        "callbacks.sample_grid=null",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
        "++trainer.num_sanity_val_steps=0",
    ]
    fit(compose_train(overrides, out))
    GlobalHydra.instance().clear()
    return out / "checkpoints" / "last.ckpt"


def test_sample_py_with_labels_and_guidance(conditional_checkpoint: Path, tmp_path: Path) -> None:
    args = [
        f"ckpt_path={conditional_checkpoint}",
        "num_samples=12",
        "sampler=ddim",
        "sampler.steps=3",
        "progress=false",
        "guidance_scale=2",
    ]
    info = sample.run(compose_config("sample", [*args, "batch_size=5"], tmp_path / "a"))
    with np.load(tmp_path / "a" / "samples.npz") as saved:
        assert saved["labels"].dtype == np.int64
        assert saved["labels"].tolist() == [i % 10 for i in range(12)]  # balanced by default
        images = saved["images"]
    assert info["labels"] == [i % 10 for i in range(12)] and info["guidance_scale"] == 2.0
    assert info["nfe"] == 3
    # The same images whatever the batch size; another w gives other images.
    sample.run(compose_config("sample", [*args, "batch_size=12"], tmp_path / "b"))
    same = (tmp_path / "a" / "samples.npz").read_bytes()
    assert (tmp_path / "b" / "samples.npz").read_bytes() == same
    cycled = sample.run(compose_config("sample", [*args, "labels=[3,1]"], tmp_path / "c"))
    assert cycled["labels"][:4] == [3, 1, 3, 1]
    assert not np.array_equal(np.load(tmp_path / "c" / "samples.npz")["images"], images)

    for override, message in [
        ("guidance_scale=-1", r"guidance_scale=-1 must be a number >= 0"),
        ("labels=[10]", r"class id 10 is out of range: this model has 10 classes, ids 0 to 9"),
    ]:
        bad = [*args, override]
        with pytest.raises(UserError, match=message):
            sample.run(compose_config("sample", bad, tmp_path / "bad"))
        assert not (tmp_path / "bad" / "shards").exists()


def test_training_grid_of_a_conditional_run_has_one_row_per_class(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ddpm_unet.callbacks.sample_grid import SampleGrid

    net = Recorder()
    module = SimpleNamespace(
        num_classes=K,
        ema=SimpleNamespace(module=net),
        diffusion=GaussianDiffusion(20),
        image_channels=1,
        image_size=8,
    )
    grid = SampleGrid(str(tmp_path), num_samples=8, nrow=2, sampler=DDIM(steps=2))
    assert grid.sample(module).shape == (8, *SHAPE)
    assert net.calls[0] == (8, [0, 0, 1, 1, 2, 2, 0, 0])  # w = 1 (unset): one plain call
    guided = SampleGrid(
        str(tmp_path), num_samples=4, nrow=2, sampler=DDIM(steps=2), guidance_scale=3.0
    )
    guided.sample(module)
    assert net.calls[-1] == (8, [0, 0, 1, 1, 3, 3, 3, 3])  # both halves in one call
    with pytest.raises(UserError, match=r"guidance_scale=-2 must be a number >= 0"):
        SampleGrid(str(tmp_path), guidance_scale=-2)
    with pytest.raises(UserError, match=r"guidance_scale=3.0 needs a class-conditional model"):
        guided.setup(None, SimpleNamespace(num_classes=None), "fit")


def test_conditional_checkpoint_round_trip_under_ddp_sim(tmp_path: Path) -> None:
    """A conditional run on two DDP processes (`trainer=ddp_sim`) writes one checkpoint with its
    classes, which samples with labels and guidance like a one-process run's."""
    from tests.conftest import CLI_TINY, run_train_cli

    args = [o for o in CLI_TINY if not o.startswith("trainer.accelerator")]
    done = run_train_cli(
        [*args, "trainer=ddp_sim", "model.net.num_classes=10", "callbacks.sample_grid=null"]
        + [f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path / "logs",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["num_classes"] == 10 and saved["class_names"] == [str(d) for d in range(10)]
    model = sample.load_model(ckpt)
    assert model.num_classes == 10 and model.net.num_classes == 10
    args = [f"ckpt_path={ckpt}", "num_samples=10", "sampler=ddim", "sampler.steps=2"]
    info = sample.run(
        compose_config("sample", [*args, "progress=false", "guidance_scale=3"], tmp_path / "s")
    )
    with np.load(tmp_path / "s" / "samples.npz") as samples:
        assert samples["labels"].tolist() == list(range(10))
        assert samples["images"].shape == (10, 8, 8, 1)
    assert info["nfe"] == 2 and info["guidance_scale"] == 3.0
