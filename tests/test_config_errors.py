"""Bad config values stop a command before any work, with one message naming the key.

Most cases call the check functions in-process (milliseconds each); a handful run `train.py`,
`sample.py` and `eval.py` as a user would (about 8 s each) to check what the user sees: exit
status 2, one `error: ...` line naming the key, no traceback, no checkpoint left behind. Genuine
bugs (a plain ValueError or RuntimeError deep inside) must keep their traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from ddpm_unet.data.datamodule import ImageDataModule
from ddpm_unet.data.datasets import DatasetNotFoundError
from ddpm_unet.data.folder import CorruptImagesError
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.unet import UNet
from ddpm_unet.utils.cli import TRACEBACK_ENV, exit_on_user_error, user_message
from ddpm_unet.utils.config_checks import (
    ConfigError,
    check_device,
    check_eval_config,
    check_sample_config,
    check_train_config,
)
from ddpm_unet.utils.errors import UserError
from tests.conftest import CLI_TINY, ROOT, TINY_OVERRIDES, compose_config, compose_train

NO_CUDA = not torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------
# train: each bad value names its key (in-process)
# ------------------------------------------------------------------------------------------------

ATTN_AT = "model.net.is_attn='${attn_at:${model.net.ch_mults},${attn_placement}}'"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Objects' own checks (their argument names, under the group's key): key + value only.
        (["data.batch_size=abc"], ("data", "batch_size='abc'")),
        (["data.batch_size=-2"], ("data", "batch_size=-2")),
        (["data.batch_size=true"], ("data", "batch_size=True")),
        (["data.batch_size=null"], ("data", "batch_size=None")),
        (["seed=abc"], "seed='abc' is not an integer"),
        (["seed=-1"], "seed=-1 is out of range: give a whole number from 0 to 4294967295"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not an integer"),
        (["trainer.max_steps=1.5"], "trainer.max_steps=1.5 is not an integer"),
        (["trainer.max_steps=0"], "trainer.max_steps=0 is out of range: give a positive whole"),
        (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 is out of"),
        (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is out of range"),
        (["model.optimizer.lr=-1"], "model.optimizer.lr=-1 is out of range: give a number > 0"),
        (["model.optimizer.lr=abc"], "model.optimizer.lr='abc' is not a number"),
        (["model.optimizer.lr=nan"], "model.optimizer.lr=nan is out of range"),
        (["model.ema_decay=1.0"], ("model", "ema_decay=1.0")),
        (["data.dataset=imagenet"], ("data", "dataset='imagenet'")),
        (["data.image_channels=2"], ("data", "image_channels=2")),
        (["model.net.dropout=1.0"], ("model.net", "dropout=1.0")),
        (["model.net.ch_mults=[]"], ("model.net", "ch_mults=[]")),
        (
            ["data.batch_size=30", "trainer.devices=4"],
            "data.batch_size=30 is the global batch size and must be divisible by the world size"
            " 4 (trainer.devices x trainer.num_nodes)",
        ),
        (["data.val_fraction=1.5"], ("data", "val_fraction=1.5")),
        (["data.num_workers=-1"], ("data", "num_workers=-1")),
        (["model.diffusion.num_timesteps=abc"], ("model.diffusion", "num_timesteps='abc'")),
        (["model.net.n_channels=abc"], ("model.net", "n_channels='abc'")),
        (["model.scheduler.warmup_steps=-1"], "model.scheduler: warmup_steps=-1 must be"),
        (["callbacks.sample_grid.num_samples=0"], ("callbacks.sample_grid", "num_samples=0")),
        (["callbacks.sample_grid.sampler.steps=0"], ("callbacks.sample_grid.sampler", "steps=0")),
        (["model.net.ch_mults=abc"], ("model.net", "ch_mults='abc'")),
        (["model.net.ch_mults=[1,x]"], ("model.net", "'x'")),
        (["model.net.is_attn=[1,0]"], ("model.net", "is_attn=[1, 0]")),
        (["init_from=a.ckpt", "ckpt_path=b.ckpt"], "ckpt_path=b.ckpt and init_from=a.ckpt are"),
        (
            ["data=folder"],
            "data.root is required but not set (it is ??? in the config): give it on the command "
            "line, e.g. data.root=/path/to/images.",
        ),
        (
            ["attn_placement=middle", ATTN_AT],
            "model.net.is_attn cannot be computed: attn_placement='middle' is unknown",
        ),
    ],
)
def test_bad_train_value_names_its_key(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose_train([*TINY_OVERRIDES, *overrides], tmp_path)
    with pytest.raises(ConfigError) as info:
        check_train_config(cfg)
    assert_names(str(info.value), message)
    assert not list(tmp_path.iterdir())  # nothing written


def assert_names(text: str, message: str | tuple[str, str]) -> None:
    """`message` is in `text`; a (key, value) pair: an object's own message (its wording is the
    object's), reported under `key` and naming the value."""
    if isinstance(message, str):
        assert message in text, text
    else:
        key, value = message
        # `key: name=value ...` (the object's own words), or the older `key.name=value` form
        name = value.split("=")[0]
        assert text.startswith(f"{key}: ") or f"{key}.{name}" in text, text
        assert value in text or value.replace("True", "true").replace("None", "null") in text, text


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["seed=0", "trainer.max_epochs=-1", "trainer.max_steps=10"],
        ["seed=null", "trainer.max_epochs=null", "trainer.check_val_every_n_epoch=null"],
        ["callbacks.sample_grid=null", "model.optimizer.lr=1", "trainer.gradient_clip_val=null"],
        ["attn_placement=lowest", ATTN_AT],
    ],
)
def test_good_train_values_pass(overrides: list[str], tmp_path: Path) -> None:
    check_train_config(compose_train([*TINY_OVERRIDES, *overrides], tmp_path))


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without a CUDA GPU")
def test_gpu_accelerator_without_a_gpu_names_the_key(tmp_path: Path) -> None:
    cfg = compose_train([*TINY_OVERRIDES, "trainer.accelerator=gpu"], tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer: .*gpu"):  # Lightning's own message
        check_train_config(cfg)


# ------------------------------------------------------------------------------------------------
# sample.py / eval.py (in-process)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_samples=abc"], "num_samples='abc' is not an integer"),
        (["num_samples=0"], "num_samples=0 is out of range"),
        (["batch_size=-2"], "batch_size=-2 is out of range: give a positive whole number, or null"),
        (["seed=x"], "seed='x' is not an integer"),
        (["sampler=ddim", "sampler.steps=0"], ("sampler", "steps=0")),
        (["sampler=ddim", "sampler.eta=abc"], ("sampler", "eta='abc'")),
        (["sampler=ddim", "sampler.spacing=even"], ("sampler", "spacing='even'")),
        (["device=tpu7"], "device='tpu7' is not a device: use auto, cpu, cuda, cuda:N or mps."),
    ],
)
def test_bad_sample_value_names_its_key(overrides: list[str], message: str, tmp_path) -> None:
    cfg = compose_config("sample", ["ckpt_path=any.ckpt", *overrides], tmp_path)
    with pytest.raises(ConfigError) as info:
        check_sample_config(cfg)
    assert_names(str(info.value), message)


def test_sample_without_ckpt_path_names_it(tmp_path: Path) -> None:
    cfg = compose_config("sample", [], tmp_path)
    with pytest.raises(ConfigError, match=r"ckpt_path is required but not set.*last\.ckpt"):
        check_sample_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_samples=1"], "num_samples=1 is out of range: give a whole number >= 2"),
        (["reference_split=test"], "reference_split='test' is unknown: use one of train, val."),
        (["kid_subsets=abc"], "kid_subsets='abc' is not an integer"),
        (["num_reference=0"], "num_reference=0 is out of range"),
    ],
)
def test_bad_eval_value_names_its_key(overrides: list[str], message: str, tmp_path) -> None:
    cfg = compose_config("eval", ["ckpt_path=any.ckpt", *overrides], tmp_path)
    with pytest.raises(ConfigError) as info:
        check_eval_config(cfg)
    assert message in str(info.value)


def test_default_sample_and_eval_values_pass(tmp_path: Path) -> None:
    check_sample_config(compose_config("sample", ["ckpt_path=a.ckpt", "device=cpu"], tmp_path))
    check_eval_config(compose_config("eval", ["ckpt_path=a.ckpt", "device=cpu"], tmp_path))


def test_cuda_device_without_a_gpu_names_device_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        check_device("device", "cuda")
    assert str(info.value) == (
        "device=cuda but torch finds no CUDA GPU on this machine: use device=auto (a GPU when "
        "there is one, else the CPU) or device=cpu."
    )
    # One GPU visible: cuda:0 is fine, cuda:3 is named with the valid range.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("device", "cuda:0")
    with pytest.raises(ConfigError, match=r"device=cuda:3 but torch finds only 1 CUDA GPU\(s\)"):
        check_device("device", "cuda:3")
    for fine in ("auto", "cpu", None):
        check_device("device", fine)


# ------------------------------------------------------------------------------------------------
# which errors are user errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: UNet(n_channels=16, n_groups=7),
        lambda: UNet(ch_mults=(1, 2), is_attn=(False,)),
        lambda: GaussianDiffusion(variance="wrong"),
        lambda: ImageDataModule("digits", batch_size=0),
        lambda: ImageDataModule("folder", root="/nonexistent/images").prepare_data(),
    ],
)
def test_argument_checks_raise_user_errors(build) -> None:
    with pytest.raises(UserError):
        build()


def test_data_and_checkpoint_errors_are_user_errors() -> None:
    from ddpm_unet.utils.checkpoint import CheckpointError

    for cls in (ConfigError, CorruptImagesError, DatasetNotFoundError, CheckpointError):
        assert issubclass(cls, UserError), cls
    # still what callers caught before
    assert issubclass(UserError, ValueError) and issubclass(DatasetNotFoundError, FileNotFoundError)


# ------------------------------------------------------------------------------------------------
# exit_on_user_error: user errors one line, bugs keep their traceback
# ------------------------------------------------------------------------------------------------


def _deep_bug(kind: type[Exception]) -> None:
    raise kind("shape mismatch deep inside torch")


@pytest.mark.parametrize("kind", [ValueError, RuntimeError, TypeError])
def test_genuine_bug_keeps_its_traceback(kind: type[Exception]) -> None:
    task = exit_on_user_error(lambda: _deep_bug(kind))
    with pytest.raises(kind, match="shape mismatch") as info:
        task()
    # the frame that raised is still in the traceback
    assert "_deep_bug" in [entry.name for entry in info.traceback]


def test_user_error_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    task = exit_on_user_error(lambda: (_ for _ in ()).throw(ConfigError("seed='x' is bad")))
    with pytest.raises(SystemExit) as info:
        task()
    assert info.value.code == 2
    assert "error: seed='x' is bad" in capsys.readouterr().err


def test_traceback_env_raises_the_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    task = exit_on_user_error(lambda: (_ for _ in ()).throw(ConfigError("seed='x' is bad")))
    with pytest.raises(ConfigError):
        task()


def _build(target: str, **kwargs) -> object:
    return instantiate(DictConfig({"_target_": target, **kwargs}))


def test_errors_while_hydra_builds_objects_are_unwrapped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a user error in a constructor: its own message only, not Hydra's wrapper
    task = exit_on_user_error(lambda: _build("ddpm_unet.models.unet.UNet", n_groups=7))
    with pytest.raises(SystemExit):
        task()
    err = capsys.readouterr().err
    assert "error: " in err and "n_groups=7" in err
    assert "Error in call to target" not in err and "full_key" not in err
    # with the traceback asked for: the original error, raised from the constructor's frames
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(UserError) as info:
        task()
    assert any(str(entry.path).endswith("unet.py") for entry in info.traceback)
    # a bug in a constructor: the original exception and its traceback, not a one-liner
    monkeypatch.delenv(TRACEBACK_ENV)
    monkeypatch.setattr(
        "ddpm_unet.models.unet.UNet.__init__", lambda *a, **k: _deep_bug(RuntimeError)
    )
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        task()
    assert "_deep_bug" in [entry.name for entry in info.traceback]


class _FailingItems(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        raise CorruptImagesError("/data/x.jpg cannot be decoded now: delete or re-export it.")


def test_user_error_from_a_dataloader_worker_is_shown_without_the_worker_traceback() -> None:
    with pytest.raises(CorruptImagesError) as info:
        next(iter(DataLoader(_FailingItems(), num_workers=1)))
    assert "Original Traceback" in str(info.value)  # what torch makes of it
    assert user_message(info.value) == (
        "/data/x.jpg cannot be decoded now: delete or re-export it."
    )


# ------------------------------------------------------------------------------------------------
# as a user runs them (subprocesses)
# ------------------------------------------------------------------------------------------------


def _run(script: str, args: list[str], tmp_path: Path, code: str | None = None):
    """`python SCRIPT ARGS` in the project root (or `python -c CODE` that runs SCRIPT)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop(TRACEBACK_ENV, None)
    head = ["-c", code, script] if code else [script]
    return subprocess.run(
        [sys.executable, *head, *args, f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _assert_user_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"error: {message}" in result.stderr, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Error executing job" not in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.optimizer.lr=-1"], "model.optimizer.lr=-1 is out of range"),
        (["data=folder", "data.num_workers=0"], "data.root is required but not set"),
        # raised in UNet.__init__ while the model group is built: under the group's key
        (["model.net.n_groups=3"], "model.net: "),
    ],
)
def test_train_py_bad_value_exits_2_before_any_work(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = _run("train.py", [*CLI_TINY, *args], tmp_path)
    _assert_user_error(result, message)
    assert not list(tmp_path.rglob("*.ckpt"))  # no interrupted.ckpt of an untrained model


# `device=cuda` where there is no GPU; on a GPU machine, a negative batch size instead.
SAMPLE_CASE = (
    (["device=cuda"], "device=cuda but torch finds no CUDA GPU on this machine")
    if NO_CUDA
    else (["batch_size=-2"], "batch_size=-2 is out of range")
)


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("sample.py", *SAMPLE_CASE),
        ("eval.py", ["num_samples=abc"], "num_samples='abc' is not an integer"),
    ],
)
def test_sample_and_eval_bad_value_exit_2(
    script: str, args: list[str], message: str, tmp_path: Path
) -> None:
    # the values are checked before the checkpoint is read: this one need not exist
    result = _run(script, ["ckpt_path=missing.ckpt", *args], tmp_path)
    _assert_user_error(result, message)


def test_train_py_bug_keeps_its_traceback(tmp_path: Path) -> None:
    """A plain ValueError deep inside (a bug, not bad input) is not turned into a one-liner."""
    code = (
        "import runpy, sys\n"
        "from ddpm_unet.data.datamodule import ImageDataModule\n"
        "def setup(self, stage=None):\n"
        "    raise ValueError('a bug deep inside setup')\n"
        "ImageDataModule.setup = setup\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    result = _run("train.py", CLI_TINY, tmp_path, code=code)
    assert result.returncode not in (0, 2), result.stderr[-3000:]
    assert "Traceback" in result.stderr and "a bug deep inside setup" in result.stderr
    assert "error: a bug deep inside setup" not in result.stderr
