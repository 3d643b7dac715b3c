"""Every config file composes, and what it names can be built."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from ddpm_unet.data import ImageDataModule
from ddpm_unet.metrics.inception import make_random_inception_weights
from ddpm_unet.models.lit_diffusion import LitDiffusion
from ddpm_unet.utils.instantiate import instantiate_callbacks, instantiate_loggers
from tests.conftest import CONFIG_DIR, compose_train


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


# Tiny networks so that even the 168M-parameter unet_seed composes fast when only the
# architecture-independent parts are instantiated.
PARAMS = {
    "model": _options("model"),
    "data": _options("data"),
    "trainer": _options("trainer"),
    "logger": _options("logger"),
    "callbacks": _options("callbacks"),
    "debug": _options("debug"),
    "experiment": _options("experiment"),
    "hparams_search": _options("hparams_search"),
}


def test_every_group_has_its_documented_options() -> None:
    assert {"unet_small", "unet_seed", "unet_ddpm_cifar10"} <= set(PARAMS["model"])
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "celeba", "folder"} <= set(
        PARAMS["data"]
    )
    assert {"default", "cpu", "gpu", "mps", "ddp", "ddp_sim"} <= set(PARAMS["trainer"])
    assert {"csv", "tensorboard", "wandb"} <= set(PARAMS["logger"])
    assert {"fdr", "overfit", "limit"} <= set(PARAMS["debug"])
    assert "ddpm_cifar10" in PARAMS["experiment"]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in PARAMS.items() for o in opts])
def test_config_composes_and_instantiates(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    if group == "data" and option == "folder":
        overrides.append(f"data.root={tmp_path}")
    if group == "callbacks" and option == "fid":
        # the real InceptionV3 architecture with random weights (tests never download)
        weights = make_random_inception_weights(tmp_path / "inception.pth")
        overrides.append(f"callbacks.fid.inception_weights={weights}")
    cfg = compose_train(overrides, tmp_path)
    assert OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group in ("model", "experiment", "hparams_search") or option == "default":
        model = instantiate(cfg.model)
        assert isinstance(model, LitDiffusion)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, ImageDataModule)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    assert all(isinstance(c, L.Callback) for c in callbacks)
    with open_dict(cfg):
        if cfg.logger and "wandb" in cfg.logger:
            cfg.logger.wandb.offline = True
    loggers = instantiate_loggers(cfg.get("logger"))
    assert all(hasattr(lg, "log_metrics") for lg in loggers)
    # Accelerators absent here (GPU, MPS) are checked for composition only.
    if cfg.trainer.get("accelerator") in ("cpu", "auto"):
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        assert isinstance(trainer, L.Trainer)


def test_ddpm_cifar10_experiment_is_the_papers_setup() -> None:
    """Ho et al. 2020, CIFAR-10: none of the digits default's short-run choices leak into it."""
    cfg = compose_train(["experiment=ddpm_cifar10"])
    model, diffusion = cfg.model, cfg.model.diffusion
    assert (diffusion.num_timesteps, diffusion.schedule) == (1000, "linear")
    assert dict(diffusion.schedule_kwargs) == {"beta_start": 1e-4, "beta_end": 0.02}
    assert (diffusion.loss_weighting, diffusion.prediction_type) == ("uniform", "eps")
    assert (model.optimizer.lr, model.optimizer.weight_decay) == (2e-4, 0.0)
    assert model.optimizer.betas == [0.9, 0.999]
    assert (model.scheduler.warmup_steps, model.scheduler.decay) == (5000, "none")
    assert (model.ema_decay, model.ema_warmup) == (0.9999, False)
    assert (model.net.n_channels, list(model.net.ch_mults)) == (128, [1, 2, 2, 2])
    assert list(model.net.is_attn) == [False, True, False, False]  # attention at 16x16
    assert model.net.dropout == 0.1
    assert (cfg.data.dataset, cfg.data.batch_size, cfg.data.random_flip) == ("cifar10", 128, True)
    assert (cfg.trainer.max_steps, cfg.trainer.gradient_clip_val) == (800_000, 1.0)


@pytest.mark.parametrize("model", ["unet_seed", "unet_ddpm_cifar10"])
def test_ddpm_named_models_keep_ddpms_training_recipe(model: str) -> None:
    """They use the DDPM base (configs/model/ddpm.yaml) as is: only the network differs."""
    cfg = compose_train([f"model={model}"]).model
    base = compose_train(["model=ddpm"]).model
    for key in ("diffusion", "optimizer", "scheduler", "ema_decay", "ema_warmup"):
        assert cfg[key] == base[key], key
    assert (cfg.diffusion.schedule, cfg.diffusion.loss_weighting) == ("linear", "uniform")
    assert (cfg.optimizer.lr, cfg.scheduler.warmup_steps, cfg.scheduler.decay) == (
        2e-4,
        5000,
        "none",
    )
    assert cfg.ema_decay == 0.9999


def test_the_experiment_states_only_what_the_model_config_does_not() -> None:
    experiment = compose_train(["experiment=ddpm_cifar10"])
    assert experiment.model == compose_train(["model=unet_ddpm_cifar10", "data=cifar10"]).model
    text = (CONFIG_DIR / "experiment" / "ddpm_cifar10.yaml").read_text()
    assert "\nmodel:" not in text  # no model values restated


def test_unet_small_overrides_the_ddpm_base_for_digits() -> None:
    cfg = compose_train([]).model
    assert (cfg.diffusion.schedule, cfg.diffusion.schedule_kwargs) == ("cosine", None)
    assert (cfg.optimizer.lr, cfg.scheduler.warmup_steps, cfg.scheduler.decay) == (
        3e-3,
        100,
        "cosine",
    )
    assert (cfg.ema_decay, cfg.ema_warmup, cfg.net.dropout, cfg.net.n_blocks) == (
        0.99,
        True,
        0.0,
        1,
    )
    assert cfg.net._target_ == "ddpm_unet.models.unet.UNet"
    assert cfg.optimizer._partial_ and cfg.scheduler._target_.endswith(".WarmupCosine")
