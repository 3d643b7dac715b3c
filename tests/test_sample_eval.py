"""`sample.py` and `eval.py` end to end on a tiny checkpoint, with a random-weights InceptionV3.

The commands run as a user runs them (subprocesses in the project root) once each; the other
checks call the same `run` functions in-process on configs composed from the same files.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from hydra.utils import instantiate
from omegaconf import open_dict
from PIL import Image

from ddpm_unet import evaluate, sample
from ddpm_unet.metrics.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAME,
    InceptionWeightsNotFoundError,
)
from ddpm_unet.metrics.reference_stats import reference_cache_name, select_indices
from tests.conftest import ROOT, compose_config
from tests.fidelity_helpers import RGBUInt8, random_weights_file, uint8

NUM_SAMPLES = 12
NUM_REFERENCE = 16


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights_file(tmp_path_factory)


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty torch home: the real torch.hub cache is neither used nor written."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        mp.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
        yield home


def run_command(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def only_run_dir(log_dir: Path, task: str) -> Path:
    runs = list((log_dir / task / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_sample_py_writes_npz_grid_and_pngs_and_is_reproducible(
    checkpoint: Path, tmp_path: Path
) -> None:
    args = [
        f"ckpt_path={checkpoint}",
        "num_samples=6",
        "sampler=ddim",
        "sampler.steps=4",
        "sampler.eta=0.0",
        "seed=3",
        "batch_size=4",
        "save_pngs=true",
    ]
    result = run_command("sample.py", [*args, f"paths.log_dir={tmp_path / 'cli'}"], {})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ddim sampling 6 images" in result.stderr  # the progress bar
    run_dir = only_run_dir(tmp_path / "cli", "sample")
    images = np.load(run_dir / "samples.npz")["images"]
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
    # 8x8 digits are shown at 32 px in the grid (like the training grids): 6 tiles of 32x32.
    grid = Image.open(run_dir / "grid.png")
    assert grid.width * grid.height >= 6 * 32 * 32
    pngs = sorted((run_dir / "pngs").glob("*.png"))
    assert len(pngs) == 6
    assert np.array_equal(np.asarray(Image.open(pngs[5])), images[5, ..., 0])
    info = json.loads((run_dir / "sample_info.json").read_text())
    assert info["sampler"] == "ddim" and info["steps"] == 4 and info["use_ema"]

    # The same settings in-process give the same images; another seed gives others.
    same = sample.run(compose_config("sample", [*args, "progress=false"], tmp_path / "again"))
    assert np.array_equal(np.load(same["samples"])["images"], images)
    other = sample.run(
        compose_config("sample", [*args, "seed=4", "progress=false"], tmp_path / "other")
    )
    assert not np.array_equal(np.load(other["samples"])["images"], images)

    # The default sampler group: DPM-Solver++(2M) SDE, 20 counted model calls per image.
    default = sample.run(
        compose_config(
            "sample", [f"ckpt_path={checkpoint}", "num_samples=2", "progress=false"], tmp_path / "d"
        )
    )
    assert default["sampler"] == "dpm_solver_sde" and default["nfe"] == 20

    # DPM-Solver++ from its config file (built by Hydra from `_target_`).
    dpm_args = [f"ckpt_path={checkpoint}", "num_samples=2", "progress=false"]
    dpm = sample.run(
        compose_config(
            "sample", [*dpm_args, "sampler=dpm_solver", "sampler.steps=5"], tmp_path / "dpm"
        )
    )
    assert dpm["sampler"] == "dpm_solver" and dpm["steps"] == 5
    assert dpm["sampler_settings"] == {"steps": 5, "sigmas": "trailing", "rho": 7.0, "eta": 0.0}
    assert np.load(dpm["samples"])["images"].shape == (2, 8, 8, 1)


def eval_args(checkpoint: Path) -> list[str]:
    return [
        f"ckpt_path={checkpoint}",
        f"num_samples={NUM_SAMPLES}",
        f"batch_size={NUM_SAMPLES}",
        "sampler=ddim",
        "sampler.steps=4",
        f"num_reference={NUM_REFERENCE}",
        "feature_layer_fid=64",  # the first Inception block: fast on a CPU
        "isc_splits=2",
        "kid_subsets=10",
        "save_cpu_ram=true",
        "progress=false",
    ]


@pytest.mark.slow
def test_eval_py_equals_torch_fidelity_and_reuses_cached_reference_features(
    checkpoint: Path, inception_weights: Path, torch_home: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "cli"
    # The weights through the environment variable, as on an offline machine.
    env = {INCEPTION_WEIGHTS_ENV: str(inception_weights), "TORCH_HOME": str(torch_home)}
    args = [*eval_args(checkpoint), "logger=csv", f"paths.log_dir={log_dir}"]
    result = run_command("eval.py", args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(log_dir, "eval")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("fid", "kid_mean", "kid_std", "isc_mean", "isc_std"):
        assert np.isfinite(metrics[key]), (key, metrics)
    assert metrics["num_samples"] == NUM_SAMPLES and metrics["num_reference"] == NUM_REFERENCE
    assert metrics["dataset"] == "digits" and metrics["image_size"] == 8
    assert metrics["inception_weights"] == str(inception_weights)
    assert not metrics["reference_from_cache"]
    cache_dir = log_dir / "fid_cache"
    assert (cache_dir / f"{metrics['reference_cache_name']}.json").is_file()
    assert list(cache_dir.glob(f"{metrics['reference_cache_name']}-*.npz"))
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        logged = next(csv.DictReader(handle))
    assert float(logged["eval/fid"]) == pytest.approx(metrics["fid"])

    # torch-fidelity itself on the same images: eval.py's samples and the reference subset.
    samples = torch.from_numpy(np.load(run_dir / "samples.npz")["images"]).permute(0, 3, 1, 2)
    run_config = torch.load(checkpoint, map_location="cpu", weights_only=True)["run_config"]
    reference = instantiate(run_config["data"]).reference_dataset("train")
    real = uint8(torch.stack([reference[i] for i in select_indices(len(reference), NUM_REFERENCE)]))
    expected = torch_fidelity.calculate_metrics(
        input1=RGBUInt8(samples),
        input2=RGBUInt8(real),
        fid=True,
        feature_extractor_weights_path=str(inception_weights),
        feature_layer_fid="64",
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )["frechet_inception_distance"]
    assert metrics["fid"] == pytest.approx(expected, abs=1e-3)
    assert expected > 0.01

    # A second evaluation reads the reference features from the cache (and gets the same FID).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(INCEPTION_WEIGHTS_ENV, str(inception_weights))
        cfg = compose_config("eval", [*eval_args(checkpoint), "metrics.isc=false"], tmp_path / "2")
        with open_dict(cfg):
            cfg.cache_dir = str(cache_dir)
        again = evaluate.run(cfg)
    assert again["reference_from_cache"]
    assert again["reference_cache_name"] == metrics["reference_cache_name"]
    assert again["fid"] == pytest.approx(metrics["fid"], abs=1e-9)


def test_eval_stops_before_sampling_when_the_weights_are_missing(
    checkpoint: Path, torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint was loaded or sampled before the weights check")

    monkeypatch.setattr(evaluate, "load_model", fail)
    monkeypatch.setattr(evaluate, "generate_or_stop", fail)
    missing = tmp_path / "nowhere" / INCEPTION_WEIGHTS_FILENAME
    cfg = compose_config(
        "eval", [*eval_args(checkpoint), f"inception_weights={missing}"], tmp_path / "out"
    )
    with pytest.raises(InceptionWeightsNotFoundError) as info:
        evaluate.run(cfg)
    message = str(info.value)
    for part in (
        INCEPTION_WEIGHTS_FILENAME,
        f"inception_weights={missing} does not exist",
        INCEPTION_WEIGHTS_ENV,
        str(torch_home / "hub" / "checkpoints"),
    ):
        assert part in message, (part, message)
    assert not (tmp_path / "out" / "samples.npz").exists()

    # Offline with nothing configured: no download attempt when downloading is off.
    cfg = compose_config(
        "eval", [*eval_args(checkpoint), "inception_download=false"], tmp_path / "out2"
    )
    with pytest.raises(InceptionWeightsNotFoundError, match="downloading is disabled"):
        evaluate.run(cfg)


def test_reference_cache_name_follows_what_changes_the_statistics(tmp_path: Path) -> None:
    weights, other_weights = tmp_path / "w1.pth", tmp_path / "w2.pth"
    weights.write_bytes(b"weights one")
    other_weights.write_bytes(b"weights two")
    data = {
        "_target_": "ddpm_unet.data.ImageDataModule",
        "dataset": "digits",
        "root": "data/",
        "image_size": 8,
        "image_channels": 1,
        "batch_size": 128,
        "num_workers": 0,
        "val_fraction": 0.1,
        "seed": 0,
        "random_flip": False,
        "download": False,
        "max_bad_files": None,
    }

    def name(data_cfg: dict = data, split: str = "train", n: int = 100, w: Path = weights) -> str:
        return reference_cache_name(data_cfg, split, n, w)[0]

    base = name()
    assert base.startswith("digits-train-8px-1ch-n100-")
    # Settings that do not touch the reference images keep the name (and the cache).
    assert name({**data, "batch_size": 7, "num_workers": 3, "random_flip": True}) == base
    changed = [
        name(split="val"),
        name(n=50),
        name({**data, "image_size": 16}),
        name({**data, "image_channels": 3}),
        name({**data, "seed": 1}),  # another random train/val split
        name({**data, "val_fraction": 0.2}),
        name(w=other_weights),
    ]
    assert len({base, *changed}) == len(changed) + 1, changed

    # Image folders: the file list, sizes and modification times are part of the key.
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    folder_cfg = {**data, "dataset": "folder", "root": str(folder)}
    before = name(folder_cfg)
    assert name(folder_cfg) == before
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "2.png")
    assert name(folder_cfg) != before
