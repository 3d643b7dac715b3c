"""The LightningModule receives its parts built: another network or optimiser is a config change;
EMA steps with the optimiser; `val/loss_ema` beside `val/loss`; checkpoints rebuild from
their run_config alone."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch import nn

from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.lit_diffusion import LitDiffusion
from ddpm_unet.models.lr_schedules import WarmupCosine
from ddpm_unet.models.samplers import DDIM
from ddpm_unet.models.unet import UNet
from ddpm_unet.sample import load_model
from ddpm_unet.train import fit, run_config_of
from ddpm_unet.utils.checkpoint import TRUSTED_TARGETS_ENV, CheckpointError, model_from_checkpoint
from ddpm_unet.utils.errors import UserError
from tests.conftest import CONFIG_DIR, TINY_OVERRIDES, compose_train

TINY_NET = "tests.test_lit_module.TinyEpsNet"


class TinyEpsNet(nn.Module):
    """A network that is not a U-Net: `forward(x [b, C, H, W], t [b]) -> [b, C, H, W]`."""

    def __init__(self, image_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(image_channels, width, 3, padding=1)
        self.time = nn.Linear(1, width)
        self.out = nn.Conv2d(width, image_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None]
        return self.out(torch.nn.functional.silu(h))


def _csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "version_0" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_ema_updates_once_per_optimizer_step_under_gradient_accumulation(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            *TINY_OVERRIDES,
            "debug=limit",
            "trainer.max_epochs=2",
            "trainer.accumulate_grad_batches=2",
        ],
        tmp_path,
    )
    metrics = fit(cfg)
    # 3 batches per epoch, accumulated by 2: steps after batches 2 and 3 (the epoch's end).
    assert metrics["global_step"] == 4
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(ckpt["state_dict"]["ema.n_averaged"]) == 4  # not 6, the micro-batches


def test_a_custom_network_and_adam_train_sample_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    swap = [
        "~model.net",
        f"+model.net={{_target_: {TINY_NET}, image_channels: 1, width: 8}}",
        "model.optimizer._target_=torch.optim.Adam",
    ]
    first = tmp_path / "first"
    fit(compose_train([*TINY_OVERRIDES, *swap, "debug=limit", "trainer.max_epochs=2"], first))
    last = first / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    assert "net.inp.weight" in ckpt["state_dict"] and "ema.module.inp.weight" in ckpt["state_dict"]
    assert ckpt["run_config"]["model"]["net"]["_target_"] == TINY_NET
    assert ckpt["run_config"]["model"]["optimizer"]["_target_"] == "torch.optim.Adam"
    # The optimiser that ran was Adam: AdamW's parameter groups decouple weight decay.
    assert ckpt["optimizer_states"][0]["param_groups"][0]["decoupled_weight_decay"] is False
    header = _csv_rows(first)[0].keys()
    assert {"val/loss", "val/loss_ema", "lr", "train/img_per_s"} <= set(header)

    # A checkpoint naming a network outside the trusted modules is refused, nothing built...
    with pytest.raises(CheckpointError, match=f"names '{TINY_NET}', outside the trusted"):
        load_model(last)
    # ... and loads from the checkpoint alone once the user trusts it.
    monkeypatch.setenv(TRUSTED_TARGETS_ENV, "tests.")
    model = load_model(last)
    assert isinstance(model.net, TinyEpsNet)
    images = model.sample_images(2, sampler=DDIM(steps=3), seed=0)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()

    second = tmp_path / "second"
    resume = [*TINY_OVERRIDES, *swap, "debug=limit", "trainer.max_epochs=3", f"ckpt_path={last}"]
    assert fit(compose_train(resume, second))["global_step"] == 9
    resumed = torch.load(
        second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert int(resumed["state_dict"]["ema.n_averaged"]) == 9


def test_val_loss_ema_uses_the_same_draws_and_selects_the_best_checkpoint(tmp_path: Path) -> None:
    # With decay 0 the average is a copy of the weights after every step: the same draws of
    # steps and noise must then give the same loss.
    cfg = compose_train(
        [
            *TINY_OVERRIDES,
            "debug=limit",
            "trainer.max_epochs=2",
            "model.ema_decay=0.0",
            "model.ema_warmup=false",
        ],
        tmp_path,
    )
    metrics = fit(cfg)
    rows = [r for r in _csv_rows(tmp_path) if r["val/loss"]]
    assert len(rows) == 2
    for row in rows:
        assert float(row["val/loss_ema"]) == pytest.approx(float(row["val/loss"]), rel=1e-5)
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss_ema"
    assert cfg.optimized_metric == "val/loss_ema"
    best = min(float(r["val/loss_ema"]) for r in rows)
    assert metrics["best/val/loss_ema"] == pytest.approx(best)


def test_fit_on_a_config_composed_with_hydras_section(tmp_path: Path) -> None:
    """As lightning-hydra-template's tests compose: `return_hydra_config=True`, hydra.job.num
    left unset (`???`); the run config is taken without resolving Hydra's section."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[*TINY_OVERRIDES, "debug=fdr", "callbacks.sample_grid=null"],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
    HydraConfig().set_config(cfg)
    try:
        assert "hydra" not in run_config_of(cfg)
        assert fit(cfg)["global_step"] == 1
    finally:
        GlobalHydra.instance().clear()


def test_warmup_cosine_refuses_what_it_cannot_schedule(caplog: pytest.LogCaptureFixture) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(UserError, match="decay=cosine needs a known run length"):
        WarmupCosine(warmup_steps=2, decay="cosine")(opt, math.inf)
    # A run within its warm-up (a debug run) only warms up, and says so.
    with caplog.at_level(logging.WARNING, logger="ddpm_unet.models.lr_schedules"):
        short = WarmupCosine(warmup_steps=2, decay="cosine")(opt, 2)
    assert "only 2 optimiser steps, within warmup_steps=2" in caplog.text
    assert [short.lr_lambdas[0](i) for i in range(2)] == [0.5, 1.0]
    with pytest.raises(UserError, match="decay='linear' is unknown"):
        WarmupCosine(decay="linear")
    # Without decay an unknown run length is fine: warm-up, then constant.
    sched = WarmupCosine(warmup_steps=2)(opt, math.inf)
    assert [sched.lr_lambdas[0](s) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]


@pytest.mark.parametrize("target", ["x0", "v"])
def test_x0_and_v_prediction_train_sample_and_resume(tmp_path: Path, target: str) -> None:
    """`model.diffusion.prediction_type=x0|v` trains (finite losses), its checkpoint samples with
    DPM-Solver++ from the checkpoint alone, and resumes."""
    from ddpm_unet.models.samplers.dpm_solver import DPMSolver

    args = [*TINY_OVERRIDES, "debug=limit", f"model.diffusion.prediction_type={target}"]
    first = tmp_path / "first"
    metrics = fit(compose_train([*args, "trainer.max_epochs=1"], first))
    assert metrics["global_step"] == 3 and math.isfinite(metrics["val/loss"])
    last = first / "checkpoints" / "last.ckpt"
    model = load_model(last)
    assert model.diffusion.prediction_type == target
    images = model.sample_images(4, sampler=DPMSolver(steps=5), seed=0)
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()
    resumed = fit(
        compose_train([*args, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "2")
    )
    assert resumed["global_step"] == 6


# ------------------------------------------------------------------------ class conditioning


def _tiny_lit(**kwargs: object) -> LitDiffusion:
    net = UNet(1, 16, (1, 2), (False, True), n_blocks=1, n_groups=8, num_classes=10)
    return LitDiffusion(net, GaussianDiffusion(50), torch.optim.Adam, image_size=8, **kwargs)


def test_label_dropout_replaces_labels_at_its_rate_and_is_fixed_in_validation() -> None:
    lit = _tiny_lit(cond_drop_prob=0.25)
    labels = torch.arange(40_000) % 10
    torch.manual_seed(0)
    _, dropped = lit._images_and_labels((torch.zeros(40_000, 1, 1, 1), labels))
    is_dropped = dropped == 10
    # Binomial(40000, 0.25): standard deviation 0.0022, so 0.01 is 4.6 of them.
    assert abs(is_dropped.float().mean().item() - 0.25) < 0.01
    assert torch.equal(dropped[~is_dropped], labels[~is_dropped])  # the others are kept
    # Validation's draws come from its seeded generator: the same mask every epoch.
    batch = (torch.zeros(64, 1, 8, 8), torch.arange(64) % 10)
    first = lit._images_and_labels(batch, torch.Generator().manual_seed(7))[1]
    assert torch.equal(first, lit._images_and_labels(batch, torch.Generator().manual_seed(7))[1])
    with pytest.raises(UserError, match=r"^cond_drop_prob=1.5 must be a number from 0"):
        _tiny_lit(cond_drop_prob=1.5)


def test_conditional_digits_train_save_their_classes_and_load(tmp_path: Path) -> None:
    """`model.net.num_classes=10` alone makes a conditional digits run: labelled batches, the
    class names and count in the checkpoint, restored on load."""
    cfg = compose_train([*TINY_OVERRIDES, "debug=limit", "model.net.num_classes=10"], tmp_path)
    assert cfg.data.with_labels is True
    fit(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["num_classes"] == 10 and ckpt["class_names"] == [str(d) for d in range(10)]
    assert ckpt["state_dict"]["net.class_emb.weight"].shape == (11, 64)
    model = load_model(last)
    assert model.num_classes == 10 and model.class_names == ckpt["class_names"]


def test_old_unconditional_checkpoints_load_as_unconditional(checkpoint: Path) -> None:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert not any("class_emb" in key for key in ckpt["state_dict"])
    old = {k: v for k, v in ckpt.items() if k not in ("num_classes", "class_names")}
    lit = model_from_checkpoint(old, checkpoint)
    assert lit.num_classes is None and lit.class_names is None


def test_num_classes_unlike_the_datas_is_refused_at_setup() -> None:
    """Lightning sets the data module up first, then the module: before any step."""
    from types import SimpleNamespace

    from ddpm_unet.data import ImageDataModule

    labelled = ImageDataModule("digits", image_size=8, image_channels=1, with_labels=True)
    labelled.setup()
    lit = _tiny_lit()
    lit._trainer = SimpleNamespace(datamodule=labelled)
    lit.setup("fit")
    assert lit.class_names == [str(d) for d in range(10)]
    seven = LitDiffusion(
        UNet(1, 16, (1, 2), (False, True), n_blocks=1, n_groups=8, num_classes=7),
        GaussianDiffusion(50),
        torch.optim.Adam,
    )
    seven._trainer = SimpleNamespace(datamodule=labelled)
    with pytest.raises(UserError, match=r"num_classes=7 but the data module gives 10 classes"):
        seven.setup("fit")
    plain = ImageDataModule("digits", image_size=8, image_channels=1)
    plain.setup()
    lit._trainer = SimpleNamespace(datamodule=plain)
    with pytest.raises(UserError, match=r"num_classes=10 but the data module gives no labels"):
        lit.setup("fit")
