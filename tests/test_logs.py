"""What a run tells its user: the log file, the screen, the model summary and the throughput."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm_unet.callbacks import model_summary, throughput
from tests.conftest import ROOT


def test_model_summary_counts_the_network_once(cfg_train: DictConfig) -> None:
    model = instantiate(cfg_train.model)
    summary = model_summary.NetworkSummary(max_depth=1)._summary(None, model)  # type: ignore[arg-type]
    network = sum(p.numel() for p in model.net.parameters())
    assert sum(p.numel() for p in model.parameters()) == 2 * network  # the EMA copy is there
    assert summary.total_parameters == summary.trainable_parameters == network
    assert "ema" not in summary.layer_names and "net" in summary.layer_names
    assert summary.model_size == pytest.approx(network * 4e-6)


def test_throughput_leaves_out_what_runs_after_the_last_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two batches of 32 take 2 s; validation, grids and FID then take 8 s more: 32 img/s."""
    # first batch start, batch ends; any later reading (epoch end, after validation) says 10 s
    readings = iter([0.0, 1.0, 2.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(readings, 10.0))
    logged: dict[str, float] = {}
    module = SimpleNamespace(log=lambda name, value, **kw: logged.__setitem__(name, value))
    trainer = SimpleNamespace(world_size=1)
    batch = SimpleNamespace(shape=(32, 1, 8, 8))
    callback = throughput.ImagesPerSecond()
    callback.on_train_epoch_start(trainer, module)
    for i in range(2):
        callback.on_train_batch_start(trainer, module, batch, i)
        callback.on_train_batch_end(trainer, module, None, batch, i)
    # validation, sampling and FID happen here: no clock reading is left for them
    callback.on_train_epoch_end(trainer, module)
    assert logged == {"train/img_per_s": 32.0}


@pytest.mark.slow
def test_default_run_logs_once_to_its_file_and_warns_of_nothing(tmp_path: Path) -> None:
    """The default configuration for one epoch, with its warnings on (no PYTHONWARNINGS)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "trainer.max_epochs=1",
            "callbacks.sample_grid.sampler.steps=3",
            "callbacks.sample_grid.num_samples=4",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    screen = done.stdout + done.stderr
    assert "Warning" not in screen and "warn(" not in screen, screen[-4000:]
    for noise in ("GPU available", "TPU available", "Tip:"):
        assert noise not in screen
    (run,) = (tmp_path / "train" / "runs").iterdir()
    log = (run / "train.log").read_text()
    # Lightning's lines are in the file, each once; so are the summary and our own messages.
    assert log.count("GPU available") == 1
    assert log.count("Total params") == 1
    lines = [line.split(" - ", 1)[-1] for line in log.splitlines() if " - " in line]
    assert len(lines) == len(set(lines)), "a message was logged twice"
    assert re.search(r"\n1\.5 M +Total params", log)  # unet_small once, not with its EMA copy
