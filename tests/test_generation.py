"""Images that do not depend on how they were computed, on any number of ranks, resumable.

Unit checks of `ddpm_unet.generation` (per-image noise, fixed network batch, shards, the
deterministic `.npz`), then the commands as a user runs them on a tiny checkpoint:
`sample.py trainer=ddp_sim` against one process with `batch_size=7`, `eval.py` killed with
SIGKILL mid-sampling and rerun in the same folder, and `eval.py trainer=ddp_sim`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_unet import evaluate, sample
from ddpm_unet.generation.core import FixedBatch, generate_images, image_generators, image_seed
from ddpm_unet.generation.shards import ShardStore, write_npz
from ddpm_unet.metrics.inception import INCEPTION_WEIGHTS_ENV
from ddpm_unet.models.diffusion import GaussianDiffusion
from ddpm_unet.models.samplers import DDIM, DDPM
from ddpm_unet.models.unet import UNet
from ddpm_unet.utils.errors import UserError
from tests.conftest import ROOT, compose_config
from tests.fidelity_helpers import random_weights_file

SHAPE = (1, 8, 8)


def tiny_net() -> UNet:
    torch.manual_seed(0)
    net = UNet(1, n_channels=16, ch_mults=(1, 2), is_attn=(False, True), n_blocks=1, n_groups=8)
    return net.eval()


# ------------------------------------------------------------------------------------------------
# the core: image i from (seed, sampler, i) only
# ------------------------------------------------------------------------------------------------
def test_an_image_does_not_depend_on_its_batch_nor_on_the_other_images() -> None:
    net, diffusion = tiny_net(), GaussianDiffusion(20)
    kwargs = dict(seed=3, image_shape=SHAPE, model_batch=16)
    for sampler in (DDPM(), DDIM(steps=4, eta=1.0)):  # noise at every step
        whole = generate_images(net, diffusion, sampler, range(20), **kwargs, batch_size=20)
        sevens = generate_images(net, diffusion, sampler, range(20), **kwargs, batch_size=7)
        odd = generate_images(net, diffusion, sampler, [19, 3, 7], **kwargs, batch_size=2)
        # Bit for bit, in float32 (not only after the uint8 conversion).
        assert torch.equal(whole, sevens), sampler.name
        assert torch.equal(odd, whole[[19, 3, 7]]), sampler.name
        other_seed = generate_images(net, diffusion, sampler, range(20), **{**kwargs, "seed": 4})
        assert not torch.equal(other_seed, whole)

    # Image i's starting noise is the first draw of its own generator, seeded from (seed, i).
    first = torch.randn(SHAPE, generator=torch.Generator().manual_seed(image_seed(3, 5)))
    assert image_generators(3, [5])[0].initial_seed() == image_seed(3, 5)
    x_t = image_generators(3, [2, 5]).randn((2, *SHAPE), "cpu")
    assert torch.equal(x_t[1], first)
    # (seed, i) pairs do not share streams, as `seed + i` would.
    assert len({image_seed(s, i) for s in range(3) for i in range(3)}) == 9
    with pytest.raises(ValueError, match="no image indices to generate"):
        generate_images(net, diffusion, DDPM(), [], **kwargs)


def test_fixed_batch_pads_the_last_call_and_keeps_the_mode() -> None:
    calls: list[int] = []

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return x * self.w + t.view(-1, 1, 1, 1)

    net = Recorder().train()
    wrapped = FixedBatch(net, 4)
    x, t = torch.randn(6, *SHAPE), torch.arange(6)
    assert torch.equal(wrapped(x, t), x + t.view(-1, 1, 1, 1))
    assert calls == [4, 4]  # 6 images: one call of 4, one of 2 padded to 4
    DDIM(steps=2).sample(
        wrapped, GaussianDiffusion(10), (3, *SHAPE), image_generators(0, [0, 1, 2])
    )
    assert net.training  # the sampler ran it in eval mode and gave it back as it was


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def test_npz_bytes_depend_on_the_arrays_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    first = write_npz(tmp_path / "a.npz", {"images": images})
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 86_400)  # a day later (zip entries: 2 s)
    second = write_npz(tmp_path / "b.npz", {"images": images})
    assert first.read_bytes() == second.read_bytes()
    with np.load(second, allow_pickle=False) as data:
        assert np.array_equal(data["images"], images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no temp left


def test_shards_resume_dedupe_and_refuse_other_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ShardStore(tmp_path / "shards")
    settings = {"format": 1, "seed": None, "num_samples": 6, "sampler": {"sampler": "ddpm"}}
    assert store.check_settings(settings) == settings  # no earlier run
    store.write_manifest({**settings, "seed": 7})
    images = np.arange(6 * 2 * 2 * 1, dtype=np.uint8).reshape(6, 2, 2, 1)
    store.write_shard(np.array([0, 2]), images[[0, 2]])
    store.write_shard(np.array([2, 4]), images[[2, 4]])  # index 2 twice (a padded sampler)
    bad = store.folder / "shard-000000005-n1.npz"
    bad.write_bytes(store.shard_paths()[0].read_bytes()[:50])  # cut short
    # seed=null continues with the recorded seed; another seed is refused, naming both.
    assert store.check_settings(settings)["seed"] == 7
    with pytest.raises(UserError, match=r"seed: 7 then, 8 now.*another output folder"):
        store.check_settings({**settings, "seed": 8})
    plan = store.plan(6, (2, 2, 1), seed=7)
    assert plan.todo == [1, 3, 5] and plan.reused == 3 and plan.shards == 2
    assert not bad.exists() and "shard-000000005-n1.npz is unusable" in caplog.text
    store.write_shard(np.array([1, 3, 5]), images[[1, 3, 5]])
    assert np.array_equal(store.assemble(6, (2, 2, 1)), images)
    store.remove()
    assert not store.folder.exists()


# ------------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights_file(tmp_path_factory)


@pytest.fixture(scope="module")
def env(inception_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """What the commands get: the stand-in Inception weights, an empty torch home, one thread
    per process (as Lightning gives each of two ranks on two cores)."""
    values = {
        INCEPTION_WEIGHTS_ENV: str(inception_weights),
        "TORCH_HOME": str(tmp_path_factory.mktemp("torch_home")),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in values.items():
            mp.setenv(key, value)
        yield {**os.environ, **values}


def start(script: str, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, script, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen, timeout: int = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


SAMPLE_ARGS = ["num_samples=64", "sampler=ddim", "sampler.steps=4", "progress=false"]


@pytest.mark.slow
def test_sample_py_on_two_ranks_writes_the_bytes_of_one_process_with_batch_size_7(
    checkpoint: Path, env: dict, tmp_path: Path
) -> None:
    args = [f"ckpt_path={checkpoint}", *SAMPLE_ARGS, "sampler.eta=1.0", "progress=true"]
    ranks = start("sample.py", [*args, "trainer=ddp_sim", f"hydra.run.dir={tmp_path / 'ddp'}"], env)
    single = sample.run(compose_config("sample", [*args, "batch_size=7"], tmp_path / "one"))
    output = finish(ranks)
    assert "ddim sampling 64 images on 2 ranks" in output
    info = json.loads((tmp_path / "ddp" / "sample_info.json").read_text())
    assert info["world_size"] == 2 and single["world_size"] == 1
    assert (tmp_path / "ddp" / "samples.npz").read_bytes() == Path(single["samples"]).read_bytes()
    assert not (tmp_path / "ddp" / "shards").exists()  # removed once samples.npz is written


def eval_args(checkpoint: Path, cache: Path) -> list[str]:
    return [
        f"ckpt_path={checkpoint}",
        "num_samples=24",
        "sampler=ddpm",  # all 50 steps of the tiny model, with noise at each
        "num_reference=16",
        "feature_layer_fid=64",
        "metrics.isc=false",
        "kid_subset_size=16",
        "kid_subsets=4",
        "save_cpu_ram=true",
        f"cache_dir={cache}",
    ]


@pytest.fixture(scope="module")
def uninterrupted(
    checkpoint: Path, env: dict, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, bytes, Path]:
    """eval.py in one process with batch_size=7: its metrics, samples.npz bytes, cache folder."""
    cache = tmp_path_factory.mktemp("fid_cache")
    out = tmp_path_factory.mktemp("eval_one")
    args = [*eval_args(checkpoint, cache), "batch_size=7", "progress=false"]
    result = evaluate.run(compose_config("eval", args, out))
    return result, (out / "samples.npz").read_bytes(), cache


@pytest.mark.slow
def test_eval_py_killed_mid_sampling_continues_to_the_same_samples_and_metrics(
    checkpoint: Path, env: dict, uninterrupted: tuple[dict, bytes, Path], tmp_path: Path
) -> None:
    expected, expected_bytes, cache = uninterrupted
    run_dir = tmp_path / "run"
    args = [*eval_args(checkpoint, cache), "batch_size=2", "progress=false"]
    process = start("eval.py", [*args, f"hydra.run.dir={run_dir}"], env)
    shards = run_dir / "shards"
    deadline = time.monotonic() + 240
    while len(list(shards.glob("shard-*.npz"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "no shards written"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "eval.py finished before it was killed"
    written = sorted(shards.glob("shard-*.npz"))
    assert 3 <= len(written) < 12 and not (run_dir / "metrics.json").exists()
    # A shard cut short (as a copy interrupted half-way would leave) is generated again.
    written[-1].write_bytes(written[-1].read_bytes()[:100])
    reusable = 2 * (len(written) - 1)

    # Other settings in the same folder are refused before any work, naming what differs.
    cfg = compose_config("eval", [*args, "seed=1"], run_dir)
    with pytest.raises(UserError, match=r"interrupted run with other settings \(seed: 0 then, 1"):
        evaluate.run(cfg)

    # The same command continues: the finished shards are used, not made again.
    result = evaluate.run(compose_config("eval", args, run_dir))
    assert result["reused"] == reusable and result["generated"] == 24 - reusable
    assert (run_dir / "samples.npz").read_bytes() == expected_bytes
    for key in ("fid", "kid_mean", "kid_std"):
        assert result[key] == expected[key], key
    assert not shards.exists()


@pytest.mark.slow
def test_eval_py_on_two_ranks_gives_the_metrics_of_one_process(
    checkpoint: Path, env: dict, uninterrupted: tuple[dict, bytes, Path], tmp_path: Path
) -> None:
    expected, expected_bytes, cache = uninterrupted
    args = [*eval_args(checkpoint, cache), "trainer=ddp_sim", f"hydra.run.dir={tmp_path}"]
    finish(start("eval.py", args, env))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert (tmp_path / "samples.npz").read_bytes() == expected_bytes
    for key in ("fid", "kid_mean", "kid_std"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.slow
def test_sample_py_stops_on_sigterm_within_a_step_and_a_rerun_continues(
    checkpoint: Path, env: dict, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    # 2 images per network call: steps of milliseconds, 20 shards of 50 steps each.
    args = [
        f"ckpt_path={checkpoint}",
        "num_samples=40",
        "sampler=ddpm",
        "batch_size=2",
        "model_batch=2",
        "progress=false",
    ]
    process = start("sample.py", [*args, f"hydra.run.dir={run_dir}"], env)
    shards = run_dir / "shards"
    deadline = time.monotonic() + 240
    while len(list(shards.glob("shard-*.npz"))) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "no shards written"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output, _ = process.communicate(timeout=60)
    # A step of this model takes milliseconds: "within one step" leaves only shutdown time.
    assert time.monotonic() - sent < 15, output[-2000:]
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    kept = 2 * len(list(shards.glob("shard-*.npz")))
    assert 4 <= kept < 40 and not (run_dir / "samples.npz").exists()
    assert f"SIGTERM: stopped; {kept} images kept in {shards}; rerun the same command" in output
    assert "interrupted.ckpt" not in output  # a sampling run writes no checkpoint

    # The same command again (a process: one thread, as the first; in this process torch's
    # threads would make the 2-image steps many times slower on a busy machine).
    finish(start("sample.py", [*args, f"hydra.run.dir={run_dir}"], env))
    info = json.loads((run_dir / "sample_info.json").read_text())
    assert info["reused"] == kept and info["generated"] == 40 - kept
    assert info["nfe"] == 50  # DDPM: one call per step of the tiny model's 50
    assert np.load(run_dir / "samples.npz")["images"].shape == (40, 8, 8, 1)
