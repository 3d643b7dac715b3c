"""Files from users are data, not code: checkpoints and the FID reference cache.

A payload is planted in a checkpoint and in cache entries: a pickled object whose unpickling runs
`touch <marker>`. No command that reads these files may create the marker (train.py resume with
the csv and the W&B logger, sample.py, eval.py and its cache); every file that is not a usable
checkpoint gives one message naming it and saying what it is not, with exit status 2, no
traceback and never the advice to load with `weights_only=False`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from ddpm_unet import evaluate
from ddpm_unet.metrics import INCEPTION_WEIGHTS_ENV
from ddpm_unet.metrics.reference_stats import read_cache_entry
from ddpm_unet.sample import load_model
from ddpm_unet.train import fit
from ddpm_unet.utils.checkpoint import CheckpointError, CheckpointNotFoundError
from ddpm_unet.utils.config_checks import check_train_config
from ddpm_unet.utils.wandb_setup import wandb_run_id_from_checkpoint
from tests.conftest import CLI_TINY, ROOT, TINY_OVERRIDES, compose_config, compose_train
from tests.fidelity_helpers import random_weights_file

ADVICE = "weights_only=False"  # torch's advice on refused files: must never reach the user


class Payload:
    """Unpickling this runs `touch <marker>`: the stand-in for code planted in a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch '{self.marker}'",)


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
    fit(compose_train(overrides, out))
    GlobalHydra.instance().clear()
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def contents(checkpoint: Path) -> dict[str, Any]:
    """The dict in `checkpoint` (tensors and plain data)."""
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """The file a payload creates when it runs; asserted absent after each test."""
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "code planted in a file was run"


def planted_checkpoint(contents: dict[str, Any], marker: Path, path: Path) -> Path:
    """A real checkpoint of this project with a payload beside the W&B run id it reads."""
    torch.save({**contents, "wandb_run_id": Payload(marker)}, path)
    return path


def test_the_payload_runs_when_unpickled(marker: Path) -> None:
    """The control: the planted object does create the marker when unpickled, so the other
    tests would see it run."""
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()


def bad_files(folder: Path, contents: dict[str, Any], marker: Path) -> dict[str, tuple[Path, str]]:
    """`{case: (file, what the message must say)}` for files that are no usable checkpoint."""
    raw = folder / "raw"
    raw.mkdir()
    good = folder / "good.ckpt"
    torch.save(contents, good)
    whole = good.read_bytes()
    (raw / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(5000))
    (raw / "empty.ckpt").write_bytes(b"")
    (raw / "text.ckpt").write_text("model: unet\nsteps: 100\n")
    (raw / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    (raw / "pickle.ckpt").write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, raw / "state_dict.pt")
    torch.save(
        {"state_dict": {"encoder.weight": torch.zeros(2)}, "hyper_parameters": {"lr": 1}},
        raw / "other_module.ckpt",
    )
    no_config = {k: v for k, v in contents.items() if k != "run_config"}
    torch.save(no_config, raw / "no_run_config.ckpt")
    return {
        "missing": (raw / "nowhere.ckpt", "does not exist"),
        "folder": (raw, "is a folder, not a checkpoint file"),
        "random bytes": (raw / "random.ckpt", "binary data of an unknown kind"),
        "empty": (raw / "empty.ckpt", "is empty (0 bytes)"),
        "text": (raw / "text.ckpt", "a text file (starting 'model: unet"),
        "truncated": (raw / "truncated.ckpt", "a damaged or truncated archive"),
        "plain pickle": (raw / "pickle.ckpt", "a plain Python pickle (not unpickled)"),
        "planted": (
            planted_checkpoint(contents, marker, raw / "planted.ckpt"),
            "was refused: it holds Python objects (e.g. posix.system)",
        ),
        "bare state dict": (raw / "state_dict.pt", "a bare state dict (1 tensor(s), e.g. 'conv1"),
        "another module": (raw / "other_module.ckpt", "a checkpoint of another model"),
        "no run_config": (raw / "no_run_config.ckpt", "has no 'run_config'"),
    }


def test_every_bad_checkpoint_gives_one_message_naming_the_file(
    contents: dict[str, Any], marker: Path, tmp_path: Path
) -> None:
    for case, (path, expected) in bad_files(tmp_path, contents, marker).items():
        with pytest.raises(CheckpointError) as info:
            load_model(path)
        message = str(info.value)
        assert f"ckpt_path={path} " in message, (case, message)
        assert expected in message, (case, message)
        assert "weights_only" not in message, (case, message)
        assert isinstance(info.value, FileNotFoundError) == (case == "missing"), case
        # The same reader behind the W&B set-up of a resumed run and eval.py's step count.
        if case in ("planted", "truncated", "empty"):
            with pytest.raises(CheckpointError, match="ckpt_path="):
                wandb_run_id_from_checkpoint(path)
            with pytest.raises(CheckpointError, match="ckpt_path="):
                evaluate._checkpoint_position(path)
    with pytest.raises(CheckpointNotFoundError, match="ckpt_path is not set"):
        load_model(None)


def test_a_good_checkpoint_loads_and_its_wandb_run_id_is_read(
    checkpoint: Path, contents: dict[str, Any], tmp_path: Path
) -> None:
    model = load_model(checkpoint)
    assert not model.training and model.run_config["data"]["dataset"] == "digits"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, contents["state_dict"][name]), name
    torch.save({**contents, "wandb_run_id": "abc123"}, tmp_path / "wandb.ckpt")
    assert wandb_run_id_from_checkpoint(tmp_path / "wandb.ckpt") == "abc123"
    assert wandb_run_id_from_checkpoint(checkpoint) is None


def test_weights_that_do_not_fit_name_the_keys_and_shapes(
    checkpoint: Path, contents: dict[str, Any], tmp_path: Path
) -> None:
    # a run_config describing a wider U-Net than the weights it holds
    run_config = contents["run_config"]
    model_cfg = run_config["model"]
    wider = {
        **contents,
        "run_config": {
            **run_config,
            "model": {**model_cfg, "net": {**model_cfg["net"], "n_channels": 8}},
        },
    }
    torch.save(wider, tmp_path / "wider.ckpt")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "wider.ckpt")
    assert "holds another architecture" in str(info.value)
    assert "net.image_proj.weight: [16, 1, 3, 3] in the checkpoint, [8, 1, 3, 3]" in str(info.value)

    # Resuming with another configured architecture stops before any data is read.
    deeper = [
        *TINY_OVERRIDES,
        "model.net.ch_mults=[1,2,2]",
        "model.net.is_attn=[false,true,false]",
        f"ckpt_path={checkpoint}",
    ]
    with pytest.raises(CheckpointError) as info:
        check_train_config(compose_train(deeper, tmp_path / "run"))
    message = str(info.value)
    assert f"ckpt_path={checkpoint} holds another architecture than the configured model" in message
    assert "weights missing from the checkpoint ('net.down.3." in message
    assert "model.net.ch_mults=[1, 2, 2] here, [1, 2] in the checkpoint" in message
    assert "start a new run without ckpt_path" in message

    # Weights without the training state cannot be resumed (but can be sampled).
    weights_only = {k: v for k, v in contents.items() if k not in ("optimizer_states", "loops")}
    torch.save(weights_only, tmp_path / "weights.ckpt")
    cfg = compose_train([*TINY_OVERRIDES, f"ckpt_path={tmp_path / 'weights.ckpt'}"], tmp_path)
    with pytest.raises(CheckpointError, match=r"not the training state .*optimizer_states, loops"):
        check_train_config(cfg)
    load_model(tmp_path / "weights.ckpt")

    # The matching configuration passes.
    check_train_config(compose_train([*TINY_OVERRIDES, f"ckpt_path={checkpoint}"], tmp_path))
    GlobalHydra.instance().clear()


def run_command(script: str, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run `python <script> ARGS` in the project root; return stdout + stderr, checking that it
    failed with status 2 and one clean message."""
    result = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and ADVICE not in output, output[-3000:]
    return output


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["train.py", "logger=csv"], ["train.py", "logger=wandb", "logger.wandb.offline=true"]],
    ids=["train-csv", "train-wandb"],
)
def test_train_resume_refuses_a_planted_checkpoint(
    command: list[str], contents: dict[str, Any], marker: Path, tmp_path: Path
) -> None:
    planted = planted_checkpoint(contents, marker, tmp_path / "last.ckpt")
    script, *overrides = command
    args = [*CLI_TINY, *overrides, f"ckpt_path={planted}", f"paths.log_dir={tmp_path / 'logs'}"]
    output = run_command(script, args)
    assert f"error: ckpt_path={planted} was refused" in output
    assert not list((tmp_path / "logs").rglob("*.ckpt"))  # stopped before training


@pytest.mark.slow
def test_sample_refuses_a_planted_checkpoint(
    contents: dict[str, Any], marker: Path, tmp_path: Path
) -> None:
    planted = planted_checkpoint(contents, marker, tmp_path / "planted.ckpt")
    output = run_command("sample.py", [f"ckpt_path={planted}", f"paths.log_dir={tmp_path}"])
    assert f"error: ckpt_path={planted} was refused" in output


# ------------------------------------------------------------------------------------------------
# the FID reference cache
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty torch home, no weights path from the environment."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        mp.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
        yield home


def eval_args(checkpoint: Path, cache: Path, weights: Path) -> list[str]:
    """A few seconds of eval.py: 8 DDIM samples, 16 reference images, FID on Inception layer 64."""
    return [
        f"ckpt_path={checkpoint}",
        "num_samples=8",
        "sampler=ddim",
        "sampler.steps=2",
        "num_reference=16",
        "feature_layer_fid=64",
        "metrics.kid=false",
        "metrics.isc=false",
        "save_cpu_ram=true",
        "progress=false",
        f"cache_dir={cache}",
        f"inception_weights={weights}",
    ]


def plant(entries: list[Path], marker: Path) -> None:
    """Replace the first cache entry by a pickle payload and truncate the others; put payloads
    where torch-fidelity's own `.pt` cache files would be."""
    first, *others = entries
    first.write_bytes(pickle.dumps(Payload(marker)))
    for entry in others:
        entry.write_bytes(entry.read_bytes()[:100])
    for entry in entries:
        torch.save({"mu": Payload(marker)}, entry.with_suffix(".pt"))


@pytest.mark.slow
def test_a_planted_or_damaged_fid_cache_is_recomputed_before_sampling_without_running_it(
    checkpoint: Path,
    torch_home: Path,
    marker: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    weights = random_weights_file(tmp_path_factory)
    cache = tmp_path / "cache"
    args = eval_args(checkpoint, cache, weights)
    first = evaluate.run(compose_config("eval", args, tmp_path / "first"))
    entries = sorted(cache.glob(f"{first['reference_cache_name']}-*.npz"))
    assert [e.name.split("-inception-v3-compat-")[1] for e in entries] == [
        "features-64.npz",
        "stat-fid-64.npz",
    ]
    assert not list(cache.glob("*.pt")) and not list(cache.glob(".*"))  # npz only, no leftovers
    saved = {e.name: read_cache_entry(e) for e in entries}

    # In-process: the bad entries are gone (with one warning each) before sampling starts.
    plant(entries, marker)
    seen_at_sampling: list[list[str]] = []
    generate = evaluate.generate

    def recording_generate(*a: Any, **k: Any) -> torch.Tensor:
        seen_at_sampling.append([r.getMessage() for r in caplog.records if r.levelno >= 30])
        assert not any(e.exists() for e in entries), "bad cache entries left until after sampling"
        return generate(*a, **k)

    monkeypatch.setattr(evaluate, "generate", recording_generate)
    with caplog.at_level(logging.WARNING):
        second = evaluate.run(compose_config("eval", args, tmp_path / "second"))
    (warnings,) = seen_at_sampling
    assert len(warnings) == 2, warnings
    assert f"{entries[0]} is unusable: it holds pickled Python objects" in warnings[0]
    assert f"{entries[1]} is unusable: it is not a complete .npz archive" in warnings[1]
    assert all("recomputed" in w and "allow_pickle" not in w for w in warnings)
    assert not second["reference_from_cache"]
    assert second["fid"] == pytest.approx(first["fid"], abs=1e-9)
    for entry in entries:  # recomputed: the same numbers as the first time
        again = read_cache_entry(entry)
        if isinstance(again, torch.Tensor):
            assert torch.equal(again, saved[entry.name])
        else:
            assert all(np.array_equal(again[k], saved[entry.name][k]) for k in ("mu", "sigma"))
    monkeypatch.undo()

    # The command: exit 0, one warning naming the planted file, the payload never run.
    plant(entries[:1], marker)
    result = subprocess.run(
        [sys.executable, "eval.py", *args, f"paths.log_dir={tmp_path / 'cli'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TORCH_HOME": str(torch_home)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"{entries[0]} is unusable" in output and "Traceback" not in output
    (run_dir,) = (tmp_path / "cli" / "eval" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fid"] == pytest.approx(first["fid"], abs=1e-9)
