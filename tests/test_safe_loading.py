"""Files from users are data, not code: checkpoints, the FID reference cache, Inception weights.

A payload is planted in a checkpoint and in cache entries: a pickled object whose unpickling runs
`touch <marker>`. No command that reads these files may create the marker (train.py resume with
the csv and the W&B logger, sample.py, eval.py and its cache, eval.py and train.py callbacks=fid
with an Inception weights file); every file that is not a usable checkpoint (or weights file)
gives one message naming it and saying what it is not, with exit status 2, no traceback and never
the advice to load with `weights_only=False`.
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
from ddpm_unet.callbacks.fid import FIDCallback
from ddpm_unet.metrics.fidelity import UInt8Images, fidelity_metrics
from ddpm_unet.metrics.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAME,
    INCEPTION_WEIGHTS_URL,
    InceptionWeightsError,
    default_weights_path,
    expected_weight_shapes,
    load_inception_weights,
    resolve_inception_weights,
    verified_weights_copy,
)
from ddpm_unet.metrics.reference_stats import read_cache_entry
from ddpm_unet.sample import load_model
from ddpm_unet.utils.checkpoint import CheckpointError, CheckpointNotFoundError
from ddpm_unet.utils.config_checks import check_train_config
from ddpm_unet.utils.errors import UserError
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
def test_train_resume_refuses_a_planted_checkpoint(
    contents: dict[str, Any], marker: Path, tmp_path: Path
) -> None:
    # The W&B set-up reads the same file through the same reader (tested in-process above).
    planted = planted_checkpoint(contents, marker, tmp_path / "last.ckpt")
    args = [*CLI_TINY, f"ckpt_path={planted}", f"paths.log_dir={tmp_path / 'logs'}"]
    output = run_command("train.py", args)
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
    generate = evaluate.generate_or_stop

    def recording_generate(*a: Any, **k: Any) -> Any:
        seen_at_sampling.append([r.getMessage() for r in caplog.records if r.levelno >= 30])
        assert not any(e.exists() for e in entries), "bad cache entries left until after sampling"
        return generate(*a, **k)

    monkeypatch.setattr(evaluate, "generate_or_stop", recording_generate)
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


# ------------------------------------------------------------------------------------------------
# the Inception weights file
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The session's random InceptionV3 state dict (the real names and shapes)."""
    weights = random_weights_file(tmp_path_factory)
    return torch.load(weights, map_location="cpu", weights_only=True)


def planted_weights(state: dict[str, torch.Tensor], marker: Path, path: Path) -> Path:
    """A complete InceptionV3 state dict whose `fc.bias` is a payload."""
    torch.save({**state, "fc.bias": Payload(marker)}, path)
    return path


def bad_weights(
    folder: Path, state: dict[str, torch.Tensor], marker: Path
) -> dict[str, tuple[Path, str]]:
    """`{case: (file, what the message must say)}` for files that are no InceptionV3 weights."""
    folder.mkdir(exist_ok=True)
    (folder / "random.pth").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "empty.pth").write_bytes(b"")
    (folder / "text.pth").write_text("<html>proxy error</html>\n")
    (folder / "pickle.pth").write_bytes(pickle.dumps({"fc.bias": Payload(marker)}))
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, folder / "other_net.pth")
    torch.save({**state, "fc.weight": torch.zeros(10, 2048)}, folder / "other_shape.pth")
    torch.save([torch.zeros(2)], folder / "list.pth")
    good = folder / "good.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": state["Conv2d_1a_3x3.conv.weight"]}, good)
    (folder / "truncated.pth").write_bytes(good.read_bytes()[:2000])
    planted_old = folder / "planted_old_format.pth"
    torch.save(
        {**state, "fc.bias": Payload(marker)}, planted_old, _use_new_zipfile_serialization=False
    )
    refused = "was refused: it holds Python objects (e.g. posix.system)"
    return {
        "random bytes": (folder / "random.pth", "is not an InceptionV3 weights file: it is binary"),
        "empty": (folder / "empty.pth", "is empty (0 bytes)"),
        "text": (folder / "text.pth", "it is a text file (starting '<html>proxy error"),
        "plain pickle": (folder / "pickle.pth", "it is a plain Python pickle (not unpickled)"),
        "truncated": (folder / "truncated.pth", "a damaged or truncated archive"),
        "planted": (planted_weights(state, marker, folder / "planted.pth"), refused),
        "planted, torch's older format": (planted_old, refused),
        "wrong keys": (
            folder / "other_net.pth",
            "holds the weights of another network, not those of torch-fidelity's InceptionV3 "
            "(FeatureExtractorInceptionV3): 472 weights missing from the file "
            "('Conv2d_1a_3x3.conv.weight'",
        ),
        "wrong shape": (
            folder / "other_shape.pth",
            "1 weights of another shape (fc.weight: [10, 2048] in the file, [1008, 2048] in",
        ),
        "not a dict": (folder / "list.pth", "holds a list, not a state dict"),
    }


def test_the_published_weights_format_is_read_as_data_and_gives_the_same_features(
    inception_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """torch-fidelity's published file is `torch.save(dict of float tensors)` without the batch
    norms' `num_batches_tracked` (its `utils/util_convert_inception_weights.py`), possibly in
    torch's pre-1.6 format: both formats load as data, and the private copy that torch-fidelity
    gets computes the same features as the original weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    published = {k: v for k, v in inception_state.items() if not k.endswith("num_batches_tracked")}
    assert len(published) == 472
    zip_file, old_file = tmp_path / "zip.pth", tmp_path / "old.pth"
    torch.save(published, zip_file)
    torch.save(published, old_file, _use_new_zipfile_serialization=False)
    assert zip_file.read_bytes()[:2] == b"PK" and old_file.read_bytes()[:2] == b"\x80\x02"
    for path in (zip_file, old_file):
        loaded = load_inception_weights(path)
        assert loaded.keys() == published.keys()
        assert all(torch.equal(loaded[k], v) for k, v in published.items())
        assert resolve_inception_weights(path, download=False) == path

    images = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    original = tmp_path / "original.pth"
    torch.save(inception_state, original)
    (expected,) = FeatureExtractorInceptionV3("inception-v3-compat", ["64"], original)(images)
    with verified_weights_copy(old_file) as copy:
        assert copy != old_file and copy.parent.stat().st_mode & 0o077 == 0  # private folder
        (features,) = FeatureExtractorInceptionV3("inception-v3-compat", ["64"], copy)(images)
    assert not copy.exists()  # removed after use
    assert features.abs().sum() > 0 and torch.equal(features, expected)


def test_every_bad_inception_weights_file_gives_one_message_naming_it(
    inception_state: dict[str, torch.Tensor],
    marker: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    cases = bad_weights(tmp_path / "bad", inception_state, marker)
    for case, (path, expected) in cases.items():
        with pytest.raises(InceptionWeightsError) as info:
            resolve_inception_weights(path)
        message = str(info.value)
        assert message.startswith(f"inception_weights={path} "), (case, message)
        assert expected in message, (case, message)
        assert INCEPTION_WEIGHTS_URL in message, (case, message)  # where the right file is
        assert "weights_only" not in message, (case, message)
        assert isinstance(info.value, UserError), case
        # The copy handed to torch-fidelity/torchmetrics is refused the same way.
        with pytest.raises(InceptionWeightsError) as info, verified_weights_copy(path):
            pass
        assert str(info.value).startswith(f"the InceptionV3 weights file {path} "), case
        assert expected in str(info.value), case

    planted, refused = cases["planted"]
    # The FID callback checks when it is built, i.e. before any training.
    with pytest.raises(InceptionWeightsError) as info:
        FIDCallback(inception_weights=planted, download=False)
    assert str(info.value).startswith(f"inception_weights={planted} {refused}")
    # The environment variable and torch.hub's cache are named as such.
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(planted))
    with pytest.raises(InceptionWeightsError) as info:
        resolve_inception_weights(None, download=False)
    assert f"the environment variable {INCEPTION_WEIGHTS_ENV}={planted} {refused}" in str(
        info.value
    )
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV)
    cached = default_weights_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(cases["random bytes"][0].read_bytes())
    with pytest.raises(InceptionWeightsError) as info:
        resolve_inception_weights(None, download=False)
    assert f"the cached weights file {cached} is not an InceptionV3" in str(info.value)
    assert f"delete it ({cached}) to download it again" in str(info.value)


@pytest.mark.slow
def test_torch_fidelity_and_torchmetrics_never_unpickle_the_users_weights_file(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They load with `weights_only=False` whatever path they get: every such load must be of a
    private copy (gone afterwards), and every read of the user's file must be `weights_only`."""
    weights = random_weights_file(tmp_path_factory)
    expected_weight_shapes()  # built once from an empty file of ours: not what is checked here
    loads: list[tuple[Path, bool]] = []
    original_load = torch.load

    def recording_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, str | os.PathLike):
            loads.append((Path(f), bool(kwargs.get("weights_only"))))
        return original_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    values = fidelity_metrics(
        UInt8Images(images),
        UInt8Images(images[::-1].copy()),
        weights,
        kid=False,
        isc=False,
        feature_layer_fid="64",
        save_cpu_ram=True,
    )
    assert abs(values["fid"]) < 1e-3  # the same images in another order
    callback = FIDCallback(feature=64, inception_weights=weights, download=False)
    features = callback._build_inception()(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert features.shape == (4, 64)
    unrestricted = [path for path, weights_only in loads if not weights_only]
    assert len(unrestricted) >= 2, loads  # torch-fidelity's and torchmetrics' network
    for path in unrestricted:
        assert path.name == INCEPTION_WEIGHTS_FILENAME and path.parent.name.startswith(
            "ddpm-unet-inception-"
        ), path
        assert path.resolve() != weights.resolve() and not path.exists(), path
    assert (weights, True) in loads


@pytest.mark.slow
def test_eval_refuses_planted_or_bad_inception_weights_before_sampling(
    checkpoint: Path,
    inception_state: dict[str, torch.Tensor],
    torch_home: Path,
    marker: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cases = bad_weights(tmp_path / "bad", inception_state, marker)
    # In-process: random bytes and a state dict of another network stop eval before sampling.
    monkeypatch.setattr(
        evaluate, "generate_or_stop", lambda *a, **k: pytest.fail("sampling started")
    )
    for case in ("random bytes", "wrong keys"):
        path, expected = cases[case]
        cfg = compose_config("eval", eval_args(checkpoint, tmp_path / "cache", path), tmp_path)
        with pytest.raises(InceptionWeightsError) as info:
            evaluate.run(cfg)
        assert f"inception_weights={path} {expected}" in str(info.value), case
    GlobalHydra.instance().clear()

    # The command: exit 2, one line naming the file, no traceback, nothing sampled or run.
    planted, refused = cases["planted"]
    logs = tmp_path / "logs"
    args = [*eval_args(checkpoint, tmp_path / "cache", planted), f"paths.log_dir={logs}"]
    output = run_command("eval.py", args, env={"TORCH_HOME": str(torch_home)})
    assert f"error: inception_weights={planted} {refused}" in output
    assert not list(logs.rglob("samples.npz")) and not list(logs.rglob("metrics.json"))


@pytest.mark.slow
def test_train_with_fid_refuses_planted_inception_weights_before_training(
    inception_state: dict[str, torch.Tensor], marker: Path, tmp_path: Path
) -> None:
    planted = planted_weights(inception_state, marker, tmp_path / "planted.pth")
    logs = tmp_path / "logs"
    args = [
        *CLI_TINY,
        "callbacks=fid",
        f"callbacks.fid.inception_weights={planted}",
        "callbacks.fid.download=false",
        f"paths.log_dir={logs}",
    ]
    output = run_command("train.py", args)
    assert f"error: callbacks.fid: inception_weights={planted} was refused" in output
    assert not list(logs.rglob("*.ckpt"))  # stopped before training
