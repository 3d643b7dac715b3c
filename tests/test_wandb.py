"""W&B offline: what a run logs (metrics, config, sample images) and resuming the same run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_unet.train import run
from ddpm_unet.utils.images import GRID_PADDING
from tests.conftest import TINY_OVERRIDES, compose_train
from tests.wandb_records import config, history, read_finished_records, run_info

WANDB = [
    *[o for o in TINY_OVERRIDES if not o.startswith("logger=")],
    "logger=wandb",
    "logger.wandb.offline=true",
    "debug=limit",
    "trainer.log_every_n_steps=1",
    "callbacks.sample_grid.every_n_epochs=1",
    "tags=[test,wandb]",
]


def _pixels(png: Path) -> np.ndarray:
    with Image.open(png) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def _check_not_black(pixels: np.ndarray, nrow: int) -> None:
    """A grid of samples (`[H, W, 3]` uint8): white padding, and bright pixels inside images.

    A grid sent as [0, 1] floats comes out of W&B as 0/1 values: black padding, black images.
    """
    side = (pixels.shape[1] - GRID_PADDING) // nrow  # one image plus its padding
    in_padding = np.arange(pixels.shape[1]) % side < GRID_PADDING
    assert (pixels[:, in_padding] == 255).all(), "the white padding is not white"
    inside = pixels[~in_padding][:, ~in_padding]
    assert (inside > 128).mean() > 0.05, f"images are dark: max {inside.max()} of 255"
    assert inside.std() > 10, "images are flat"


def _run_file(run_dir: Path) -> Path:
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


@pytest.mark.slow
def test_wandb_offline_run_holds_metrics_config_and_samples(tmp_path: Path) -> None:
    cfg = compose_train([*WANDB, "trainer.max_epochs=2"], tmp_path)
    run(cfg)
    records = read_finished_records(_run_file(tmp_path))
    rows = history(records)
    logged = set().union(*rows)
    for key in ("train/loss_step", "val/loss", "lr", "train/img_per_s", "samples"):
        assert any(k == key or k.startswith(key + "/") for k in logged), (key, logged)
    losses = [r["train/loss_step"] for r in rows if "train/loss_step" in r]
    assert len(losses) == 6 and all(0 < v < 10 for v in losses)
    # the whole resolved config and the parameter count
    conf = config(records)
    assert conf["model"]["net"]["ch_mults"] == [1, 2]
    assert conf["data"]["dataset"] == "digits"
    assert conf["model/params/total"] > 1000
    info = run_info(records)
    assert list(info.tags) == ["test", "wandb"]
    # sample grids: the PNGs W&B stores have the pixels of the run's own grid files
    images = [r for r in rows if r.get("samples/_type") == "images/separated"]
    assert len(images) >= 2  # epoch grids (the final one reuses the last)
    for row in images:
        media = _run_file(tmp_path).parent / "files" / row["samples/filenames"][0]
        step = row["trainer/global_step"]
        (saved,) = (tmp_path / "samples").glob(f"epoch_*_step_{step:07d}.png")
        logged, expected = _pixels(media), _pixels(saved)
        assert logged.shape == expected.shape and logged.shape[0] > 8
        assert np.abs(logged.astype(int) - expected.astype(int)).max() <= 1, (media, saved)
        _check_not_black(logged, nrow=2)


@pytest.mark.slow
def test_resuming_continues_the_same_wandb_run(tmp_path: Path) -> None:
    first = tmp_path / "first"
    run(compose_train([*WANDB, "trainer.max_epochs=1"], first))
    run_id = run_info(read_finished_records(_run_file(first))).run_id
    second = tmp_path / "second"
    ckpt = first / "checkpoints" / "last.ckpt"
    run(compose_train([*WANDB, "trainer.max_epochs=2", f"ckpt_path={ckpt}"], second))
    records = read_finished_records(_run_file(second))
    assert run_info(records).run_id == run_id
    steps = [r["trainer/global_step"] for r in history(records) if "trainer/global_step" in r]
    assert min(steps) >= 3  # continues after the 3 steps of the first run
