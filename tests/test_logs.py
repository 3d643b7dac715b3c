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
    from lightning.pytorch.utilities.model_summary import get_human_readable_count

    model = instantiate(cfg_train.model)
    table = model_summary.NetworkSummary(max_depth=1).table(model)
    network = sum(p.numel() for p in model.net.parameters())
    assert sum(p.numel() for p in model.parameters()) == 2 * network  # the EMA copy is there
    count = get_human_readable_count(network)
    assert re.search(rf"{re.escape(count)} +Trainable params", table), table
    assert re.search(rf"{re.escape(count)} +Total params", table), table
    assert re.search(r"\| net +\| UNet", table) and "ema" not in table


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
    # (`weights_only`: Lightning's note that the final last.ckpt keeps the whole state, which
    # reads like advice to load files unsafely)
    for noise in ("GPU available", "TPU available", "Tip:", "weights_only"):
        assert noise not in screen
    (run,) = (tmp_path / "train" / "runs").iterdir()
    log = (run / "train.log").read_text()
    # Lightning's lines are in the file, each once; so are the summary and our own messages.
    assert log.count("GPU available") == 1
    assert log.count("Total params") == 1
    lines = [line.split(" - ", 1)[-1] for line in log.splitlines() if " - " in line]
    assert len(lines) == len(set(lines)), "a message was logged twice"
    assert re.search(r"\n1\.0 M +Total params", log)  # unet_small once, not with its EMA copy


def test_lightning_throughput_monitor_would_count_epoch_end_work_as_training(
    tmp_path: Path,
) -> None:
    """Why `ImagesPerSecond` is kept instead of Lightning's `ThroughputMonitor` (issue 10 asked
    for the library's): the monitor's clock only leaves out validation, so the sample grids (and
    checkpoints) of `on_train_epoch_end` count as training time and a sweep's img/s would depend
    on how often it draws grids. Both run on one real fit, whose epoch end takes 0.5 s."""
    import time

    import lightning as L
    import pandas as pd
    import torch
    from lightning.pytorch.callbacks import ThroughputMonitor
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    class Regression(L.LightningModule):
        flops_per_batch = None  # the monitor asks for it; FLOPs are not what this test is about

        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class SlowEpochEnd(L.Callback):  # stands in for a sample grid drawn at the epoch's end
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            time.sleep(0.5)

    trainer = L.Trainer(
        max_epochs=2,
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=1,
        callbacks=[
            ThroughputMonitor(batch_size_fn=len, window_size=4),
            throughput.ImagesPerSecond(),
            SlowEpochEnd(),
        ],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regression(), DataLoader(torch.randn(32, 4), batch_size=8))  # 4 batches/epoch
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["train/time"].dropna().iloc[-1] >= 0.5  # the epoch end's sleep is in it
    # Batches of a 4->1 linear layer take milliseconds, so every rate of ours (one per epoch) is
    # far above 32 img / 0.5 s; the monitor's windows that span the epoch end fall below it.
    lightning_windows = metrics["train/device/samples_per_sec"].dropna()
    assert lightning_windows.min() < 32 / 0.5 < metrics["train/img_per_s"].dropna().min()


def test_importing_the_package_changes_nothing_global() -> None:
    """Resolvers, warning filters, signal handlers and Lightning's DDP launcher are set by the
    entry points (and `ddpm_unet.train.run`), never by an import: a fresh interpreter checks."""
    code = """
import signal, warnings
filters = list(warnings.filters)
import ddpm_unet, ddpm_unet.callbacks, ddpm_unet.train
from lightning.pytorch.strategies.launchers import subprocess_script
from omegaconf import OmegaConf
assert not any(OmegaConf.has_resolver(n) for n in ("project_root", "grid_upscale", "attn_at"))
assert not any("LeafSpec" in str(f[1]) for f in warnings.filters)
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
assert subprocess_script._hydra_subprocess_cmd.__module__.startswith("lightning")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
