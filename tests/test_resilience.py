"""Nothing lost, nothing run (issue 14): last.ckpt, run folders, NaNs, signals, atomic saves.

Signals are real, sent with `os.kill`: to two `python train.py` processes from outside (SIGINT
during set-up, SIGTERM once training saved a checkpoint), and in-process at a chosen step for
the exact-resume check.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

import ddpm_unet.utils.instantiate as instantiate_module
from ddpm_unet.callbacks.divergence import TrainingDivergedError
from ddpm_unet.callbacks.run_folder import check_run_folder
from ddpm_unet.train import run
from ddpm_unet.utils import checkpoint as checkpoint_module
from ddpm_unet.utils.checkpoint import AtomicCheckpointIO, CheckpointSaveError
from ddpm_unet.utils.config_checks import ConfigError
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.interrupts import Interrupted, handle_signals, raise_if_interrupted
from tests.conftest import ROOT, TINY_OVERRIDES, compose_train

# 3 batches per epoch, validation every epoch, no sample grids until the end, dropout on (so
# the RNG state matters for exactness).
RUN = [
    *TINY_OVERRIDES,
    "debug=limit",
    "trainer.max_epochs=3",
    "callbacks.sample_grid.every_n_epochs=100",
    "model.net.dropout=0.1",
]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_weight_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _with_extra_callback(monkeypatch: pytest.MonkeyPatch, callback: L.Callback) -> None:
    """Add `callback` to the next runs' callbacks (what the config builds, plus this one)."""
    build = instantiate_module.instantiate_callbacks
    monkeypatch.setattr(
        instantiate_module, "instantiate_callbacks", lambda c: [*build(c), callback]
    )


class _SignalAtStep(L.Callback):
    """Sends `signum` to this process after optimiser step `step` (in-process SIGTERM/SIGINT)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """An uninterrupted run of RUN (9 steps): the weights every resume must reproduce; and the
    messages of `ddpm_unet.train`. Best checkpoints every 2nd epoch only (the weights do not
    depend on it), so the 3rd epoch saves none."""
    out = tmp_path_factory.mktemp("reference")
    logger, records = logging.getLogger("ddpm_unet.train"), _Records()
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        run(compose_train([*RUN, "+callbacks.model_checkpoint.every_n_epochs=2"], out))
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return out, records.messages


def test_last_ckpt_is_the_final_state_and_the_summary_names_the_files(
    reference_run: tuple[Path, list[str]],
) -> None:
    # Lightning's save_last alone left last.ckpt at step 6 of 9 (the last best checkpoint).
    out, messages = reference_run
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "completed" and status["metrics"]["global_step"] == 9
    assert _load(out / "checkpoints" / "last.ckpt")["global_step"] == 9
    assert _load(out / "checkpoints" / "epoch_0001.ckpt")["global_step"] == 6
    summary = next(m for m in messages if "Run summary" in m)
    assert "9 steps" in summary and "val/loss" in summary
    assert f"last checkpoint: {out / 'checkpoints' / 'last.ckpt'}" in summary
    assert f"final samples: {out / 'samples' / 'final.png'}" in summary
    assert "epoch_0001.ckpt" in summary  # the best val/loss checkpoint
    # A run that completed leaves no interrupted.ckpt behind.
    assert not (out / "checkpoints" / "interrupted.ckpt").exists()


def test_an_earlier_runs_folder_is_refused_naming_both_ways_out(
    reference_run: tuple[Path, list[str]],
) -> None:
    folder = reference_run[0]
    check_run_folder(folder, ckpt_path=str(folder / "checkpoints" / "last.ckpt"))  # a resume
    with pytest.raises(ConfigError) as err:
        check_run_folder(folder, ckpt_path=None)
    message = str(err.value)
    assert f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}" in message
    assert "new folder" in message and "hydra.run.dir" in message


def test_cli_refuses_an_old_run_folder_before_hydra_writes_into_it(tmp_path: Path) -> None:
    old = tmp_path / "old_run"
    (old / ".hydra").mkdir(parents=True)
    (old / ".hydra" / "config.yaml").write_text("an earlier run's config\n")
    (old / "checkpoints").mkdir()
    (old / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's weights")
    result = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={old}", f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"ckpt_path={old / 'checkpoints' / 'last.ckpt'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert (old / ".hydra" / "config.yaml").read_text() == "an earlier run's config\n"
    assert sorted(p.name for p in old.iterdir()) == [".hydra", "checkpoints"]


class _PoisonWeightsAtStep(L.Callback):
    """Makes a weight NaN after step `step`, as an overflowing update would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *a) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net.image_proj.weight.fill_(float("nan"))


def test_non_finite_loss_stops_at_once_and_no_nan_checkpoint_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A learning rate that diverges on the first update: stopped at step 1, nothing saved.
    diverge = [*RUN, "model.optimizer.lr=1e4", "trainer.gradient_clip_val=null"]
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 1 .*lower learning rate"):
        run(compose_train([*diverge, "model.scheduler.warmup_steps=0"], tmp_path / "lr"))
    status = json.loads((tmp_path / "lr" / "status.json").read_text())
    assert status["status"] == "failed" and "TrainingDivergedError" in status["error"]
    assert not list((tmp_path / "lr").glob("checkpoints/*.ckpt"))

    # Weights turned NaN at the last step of epoch 2: its validation may not save them, and
    # the next step's NaN loss stops the run; last.ckpt keeps epoch 1's finite state.
    _with_extra_callback(monkeypatch, _PoisonWeightsAtStep(6))
    with pytest.raises(TrainingDivergedError, match="at step 6"):
        run(compose_train(RUN, tmp_path / "poison"))
    ckpts = sorted(p.name for p in (tmp_path / "poison" / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["epoch_0000.ckpt", "last.ckpt"]  # no interrupted.ckpt, no epoch_0001
    last = _load(tmp_path / "poison" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


def test_user_error_inside_fit_writes_no_interrupted_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Raised in configure_optimizers, inside trainer.fit (Lightning's OnExceptionCheckpoint
    # saved an untrained model there), as a learning-rate schedule's check of the run would.
    from ddpm_unet.models.lit_diffusion import LitDiffusion

    def refuse(self: LitDiffusion) -> None:
        raise UserError("model.scheduler.warmup_steps=50 cannot be used here")

    monkeypatch.setattr(LitDiffusion, "configure_optimizers", refuse)
    with pytest.raises(UserError, match="warmup_steps=50"):
        run(compose_train(RUN, tmp_path))
    assert not (tmp_path / "checkpoints" / "interrupted.ckpt").exists()


def test_signals_are_recorded_until_a_safe_point_and_handlers_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with handle_signals():
        raise_if_interrupted()  # nothing received yet
        os.kill(os.getpid(), signal.SIGTERM)
        with handle_signals(), pytest.raises(Interrupted) as info:  # nested: the signal is kept
            raise_if_interrupted()
        assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
        with pytest.raises(KeyboardInterrupt):  # a SIGINT after a signal: stop at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before
    with handle_signals():
        raise_if_interrupted()  # a new block forgets the earlier signal


def test_signal_mid_epoch_saves_interrupted_ckpt_and_resume_is_exact(
    reference_run: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGINT: stopped by InterruptCheckpoint (SIGTERM, in the command-line test below, also
    # sets Lightning's flag, whose SIGTERMException comes first)
    _with_extra_callback(monkeypatch, _SignalAtStep(4, signal.SIGINT))
    with pytest.raises(SystemExit) as exit_info:
        run(compose_train(RUN, tmp_path / "stopped"))
    assert exit_info.value.code == 128 + signal.SIGINT
    status = json.loads((tmp_path / "stopped" / "status.json").read_text())
    ckpt = tmp_path / "stopped" / "checkpoints" / "interrupted.ckpt"
    assert status["status"] == "interrupted" and status["step"] == 4
    assert status["signal"] == "SIGINT" and status["checkpoint"] == str(ckpt)
    assert _load(ckpt)["global_step"] == 4

    monkeypatch.undo()
    run(compose_train([*RUN, f"ckpt_path={ckpt}"], tmp_path / "resumed"))
    resumed = _load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    reference = _load(reference_run[0] / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"] == 9
    assert _max_weight_diff(resumed["state_dict"], reference["state_dict"]) == 0.0
    assert not (tmp_path / "resumed" / "checkpoints" / "interrupted.ckpt").exists()


def _start_cli(out: Path) -> subprocess.Popen:
    args = [f"hydra.run.dir={out}", f"paths.log_dir={out.parent}", *RUN]
    args = [a for a in args if not a.startswith("trainer.max_epochs")]
    return subprocess.Popen(
        [sys.executable, "train.py", *args, "trainer.max_epochs=8"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"ended before {path} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_cli_sigint_during_set_up_and_sigterm_during_training(tmp_path: Path) -> None:
    """Two runs at once: SIGINT as soon as the run folder exists (set-up, before training),
    SIGTERM once training has saved a checkpoint. Both save interrupted.ckpt, record the
    interruption and exit with 128 + the signal number."""
    early = _start_cli(tmp_path / "sigint")
    late = _start_cli(tmp_path / "sigterm")
    _wait_for(tmp_path / "sigint" / ".hydra" / "config.yaml", early)
    os.kill(early.pid, signal.SIGINT)
    _wait_for(tmp_path / "sigterm" / "checkpoints" / "last.ckpt", late)
    os.kill(late.pid, signal.SIGTERM)
    for proc, name, code in ((early, "sigint", 130), (late, "sigterm", 143)):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == code, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        status = json.loads((tmp_path / name / "status.json").read_text())
        ckpt = tmp_path / name / "checkpoints" / "interrupted.ckpt"
        assert status["status"] == "interrupted" and status["checkpoint"] == str(ckpt)
        assert status["resume"] == f"ckpt_path={ckpt}"
        assert _load(ckpt)["global_step"] == status["step"]
    assert json.loads((tmp_path / "sigterm" / "status.json").read_text())["step"] >= 3


def _checkpoint() -> dict:
    return {"state_dict": {"w": torch.arange(100_000, dtype=torch.float32)}, "global_step": 7}


def test_atomic_save_disk_full_leaves_the_old_file_and_no_partial_or_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(), target)
    good = target.read_bytes()
    assert _load(target)["global_step"] == 7

    def full_disk(obj: object, fh) -> None:  # writes part of the file, then the disk is full
        fh.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(CheckpointSaveError, match=r"last.ckpt: No space left .*disk is full"):
        io.save_checkpoint({**_checkpoint(), "global_step": 8}, target)
    assert target.read_bytes() == good  # the previous checkpoint, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temp file
    with pytest.raises(CheckpointSaveError):  # a new file: nothing left at all
        io.save_checkpoint(_checkpoint(), tmp_path / "checkpoints" / "interrupted.ckpt")
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_atomic_save_into_an_unwritable_folder_is_one_clear_error(tmp_path: Path) -> None:
    # A parent that is a file stops root as well (chmod would not).
    blocker = tmp_path / "logs"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointSaveError, match=r"could not save the checkpoint .*paths.log_dir"):
        AtomicCheckpointIO().save_checkpoint(_checkpoint(), blocker / "checkpoints" / "last.ckpt")
    assert blocker.read_text() == "not a folder"
