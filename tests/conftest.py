"""Shared fixtures: composed Hydra configs shrunk to tiny models, tiny data and few steps."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ddpm_unet.utils.resolvers import register_resolvers

register_resolvers()  # as train.py/sample.py/eval.py do: the configs use them
ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"

# Never reach for the network (W&B, dataset or weight downloads) from the tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A model with every kind of block (attention, down/up-sampling, middle) that runs in milliseconds.
TINY_MODEL = [
    "model.net.n_channels=16",
    "model.net.ch_mults=[1,2]",
    "model.net.is_attn=[false,true]",
    "model.net.n_blocks=1",
    "model.net.n_groups=8",
    "model.diffusion.num_timesteps=50",
]

TINY_OVERRIDES = [
    *TINY_MODEL,
    "model.scheduler.warmup_steps=2",
    "data.batch_size=32",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "trainer.check_val_every_n_epoch=1",
    "logger=csv",
    "callbacks.sample_grid.sampler.steps=3",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.nrow=2",
    "callbacks.sample_grid.every_n_epochs=1",
    "callbacks.progress_bar=null",
    "extras.print_config=false",
]


def compose_config(config_name: str, overrides: list[str], out: Path | None = None) -> DictConfig:
    """Compose `configs/<config_name>.yaml` as Hydra would for a run writing into `out`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.data_dir = str(ROOT / "data")
        if out is not None:
            cfg.paths.output_dir = str(out)
            cfg.paths.log_dir = str(out)
            cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def compose_train(overrides: list[str], tmp_path: Path | None = None) -> DictConfig:
    """Compose `configs/train.yaml` with `overrides`, outputs under `tmp_path`."""
    return compose_config("train", overrides, tmp_path)


@pytest.fixture
def cfg_train(tmp_path: Path) -> Iterator[DictConfig]:
    """A tiny training config writing into `tmp_path`."""
    yield compose_train(TINY_OVERRIDES, tmp_path)
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for two batches on the digits: `<dir>/checkpoints/last.ckpt`."""
    out = tmp_path_factory.mktemp("train")
    overrides = [
        *TINY_OVERRIDES,
        "callbacks.sample_grid=null",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
        "++trainer.num_sanity_val_steps=0",
    ]
    from ddpm_unet.train import fit  # imported here: conftest stays light for the unit tests

    fit(compose_train(overrides, out))
    GlobalHydra.instance().clear()
    return out / "checkpoints" / "last.ckpt"


# The same tiny run for command-line tests (no debug preset: it pins one CPU process).
CLI_TINY = [
    *TINY_MODEL,
    "data.batch_size=32",
    "trainer.accelerator=cpu",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "trainer.check_val_every_n_epoch=1",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "callbacks.sample_grid.sampler.steps=3",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.nrow=2",
    "callbacks.progress_bar=null",
    "extras.print_config=false",
]


def run_train_cli(args: list[str], log_dir: Path, timeout: int = 420):
    """Run `python train.py ARGS` as a user would, with outputs under `log_dir`."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "train.py", *args, f"paths.log_dir={log_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_report(folder: Path) -> subprocess.CompletedProcess[str]:
    """`python -m ddpm_unet.report <folder>` as a user runs it (text output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "ddpm_unet.report", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
