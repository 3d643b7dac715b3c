"""Extending a finished run (ckpt_path + more epochs) and starting from one (init_from): they learn.

Learning, not counters: the raw weights and val/loss move, the logged lr of the new steps is > 0,
and a run started from a checkpoint begins at that checkpoint's loss, not a fresh network's.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from ddpm_unet.train import fit
from ddpm_unet.utils.config_checks import ConfigError, check_train_config
from tests.conftest import TINY_OVERRIDES, compose_train, run_train_cli

# 2 epochs x 3 batches, the lr decaying on a cosine to 0 at the last step (the default recipe's)
SHORT = [
    *TINY_OVERRIDES,
    "debug=limit",
    "trainer.max_epochs=2",
    "model.scheduler.decay=cosine",
    "model.scheduler.min_lr_ratio=0.0",
    "callbacks.sample_grid=null",
]


def _rows(run: Path) -> list[dict[str, str]]:
    rows = []
    for path in sorted((run / "csv").glob("version_*/metrics.csv")):
        with path.open() as fh:
            rows += list(csv.DictReader(fh))
    return rows


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def _net(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["state_dict"].items() if k.startswith("net.")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of 6 steps whose lr ended at 0: its folder."""
    run = tmp_path_factory.mktemp("finished")
    fit(compose_train(SHORT, run))
    GlobalHydra.instance().clear()
    return run


def as_previous_release(source: Path, dest: Path) -> Path:
    """`source` as the previous release wrote it: its run_config names the schedule
    `lr_schedules.warmup_cosine` (a function, `_partial_: true`), and the scheduler state holds
    the multiplier object's settings, the run length included."""
    state = _state(source)
    scheduler = state["run_config"]["model"]["scheduler"]
    scheduler["_target_"] = "ddpm_unet.models.lr_schedules.warmup_cosine"
    scheduler["_partial_"] = True
    state["lr_schedulers"][0]["lr_lambdas"] = [{"warmup": 2, "total": 6, "min_ratio": 0.0}]
    torch.save(state, dest)
    return dest


def test_a_checkpoint_of_the_previous_release_samples_as_its_weights_do(
    finished: Path, tmp_path: Path
) -> None:
    from ddpm_unet.models.samplers import DDIM
    from ddpm_unet.sample import load_model

    ckpt = finished / "checkpoints" / "last.ckpt"
    old = as_previous_release(ckpt, tmp_path / "old.ckpt")
    sampler = DDIM(steps=3)
    images = load_model(old).sample_images(4, sampler, seed=0)
    assert torch.equal(images, load_model(ckpt).sample_images(4, sampler, seed=0))


def test_a_finished_run_resumed_longer_learns(finished: Path, tmp_path: Path) -> None:
    """From a checkpoint as the previous release wrote it (this release's own format is resumed
    longer in the ddp_sim case below)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    first = as_previous_release(
        finished / "checkpoints" / "last.ckpt", run / "checkpoints" / "first.ckpt"
    )
    before = _state(first)
    assert before["lr_schedulers"][0]["_last_lr"][0] == 0.0  # the finished schedule
    fit(compose_train([*SHORT, "trainer.max_epochs=4", f"ckpt_path={first}"], run))
    after = _state(run / "checkpoints" / "last.ckpt")
    assert after["global_step"] == 12
    # the new steps ran at lr > 0 (the cosine re-planned over 12 steps), and the weights moved
    lrs = [float(r["lr"]) for r in _rows(run) if r.get("lr")]
    assert len(lrs) == 6 and all(lr > 0 for lr in lrs), lrs
    assert any(not torch.equal(v, _net(after)[k]) for k, v in _net(before).items())
    old_val = [r["val/loss"] for r in _rows(finished) if r.get("val/loss")][-1]
    new_val = [r["val/loss"] for r in _rows(run) if r.get("val/loss")][-1]
    assert float(new_val) != float(old_val)


def _loss(model, seed: int = 0) -> float:
    """The model's training loss on one fixed batch (fixed timesteps and noise)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1
    t = torch.randint(0, 50, (8,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        return model.diffusion.loss(
            model.net, x0.contiguous(memory_format=model.memory_format), t, noise
        ).item()


def test_init_from_starts_a_new_run_at_the_checkpoints_loss(finished: Path, tmp_path: Path) -> None:
    from ddpm_unet.sample import load_model
    from ddpm_unet.train import load_init_weights

    ckpt = finished / "checkpoints" / "last.ckpt"
    cfg = compose_train([*SHORT, f"init_from={ckpt}", "seed=7"], tmp_path)
    model = check_train_config(cfg).model
    fresh = _loss(model)
    load_init_weights(model, str(ckpt))
    assert _loss(model) == pytest.approx(_loss(load_model(ckpt)), rel=1e-6)
    assert abs(_loss(model) - fresh) > 1e-3  # not a fresh network's
    ema = {k: v for k, v in model.state_dict().items() if k.startswith("ema.")}
    assert all(torch.equal(v, _state(ckpt)["state_dict"][k]) for k, v in ema.items())
    # A new run: step 0, a fresh schedule (warm-up from lr/2), the source recorded.
    fit(cfg)
    state = _state(tmp_path / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 6
    assert state["run_config"]["init_from"]["ckpt_path"] == str(ckpt)
    assert state["run_config"]["init_from"]["run_config"]["trainer"]["max_epochs"] == 2
    first_lr = float(next(r["lr"] for r in _rows(tmp_path) if r.get("lr")))
    assert first_lr == pytest.approx(cfg.model.optimizer.lr / 2)


def test_init_from_another_architecture_names_the_first_tensor(
    finished: Path, tmp_path: Path
) -> None:
    ckpt = finished / "checkpoints" / "last.ckpt"
    cfg = compose_train([*SHORT, f"init_from={ckpt}", "model.net.n_channels=32"], tmp_path)
    with pytest.raises(ConfigError, match=rf"init_from={ckpt} holds another network.*net\.\S+ is"):
        fit(cfg)
    assert not list(tmp_path.iterdir())  # nothing written


def _train_cli(args: list[str], log_dir: Path) -> subprocess.CompletedProcess[str]:
    """`python train.py` of the short run on two DDP processes (`trainer=ddp_sim`)."""
    overrides = [o for o in SHORT if not o.startswith(("trainer.accelerator", "trainer.devices"))]
    return run_train_cli([*overrides, "trainer=ddp_sim", *args], log_dir, timeout=600)


def test_ddp_sim_extends_a_finished_run_and_starts_from_one(finished: Path, tmp_path: Path) -> None:
    """One DDP (2 CPU processes) run started from the finished run's weights; then resumed from
    its own last.ckpt for twice as long, in place: both learn (lr > 0, weights move)."""
    ckpt = finished / "checkpoints" / "last.ckpt"
    result = _train_cli([f"init_from={ckpt}", "data.batch_size=32"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "debug" / "runs").iterdir()
    started = _state(run / "checkpoints" / "last.ckpt")
    assert started["run_config"]["init_from"]["ckpt_path"] == str(ckpt)
    assert started["lr_schedulers"][0]["_last_lr"][0] == 0.0
    args = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=4"]
    result = _train_cli([*args, f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    extended = _state(run / "checkpoints" / "last.ckpt")
    assert extended["global_step"] == 2 * started["global_step"]
    assert extended["lr_schedulers"][0]["_last_lr"][0] == 0.0  # the new plan's end
    assert any(not torch.equal(v, _net(extended)[k]) for k, v in _net(started).items())
    lrs = [float(r["lr"]) for r in _rows(run) if r.get("lr")]
    assert all(lr > 0 for lr in lrs[-started["global_step"] :]), lrs
