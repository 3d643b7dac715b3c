"""Multiruns: the architecture grid + report, up-front config checks, failed jobs, launchers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ddpm_unet.utils.resolvers import attention_flags
from tests.conftest import CLI_TINY, compose_train, run_report, run_train_cli
from tests.wandb_records import read_records, run_info

pytestmark = pytest.mark.slow

# The arch grid sets ch_mults and derives is_attn; drop the tiny config's fixed architecture.
ARCH_TINY = [o for o in CLI_TINY if not o.startswith(("model.net.ch_mults", "model.net.is_attn"))]


def _sweep_dir(log_dir: Path) -> Path:
    (sweep,) = list((log_dir / "train" / "multiruns").iterdir())
    return sweep


def test_attention_flags_fit_any_depth() -> None:
    assert attention_flags([1, 2, 2], "none") == [False, False, False]
    assert attention_flags([1, 2, 2], "lowest") == [False, False, True]
    assert attention_flags([1, 2, 4, 16], "lowest_two") == [False, False, True, True]
    assert attention_flags([1, 2], "all") == [True, True]
    with pytest.raises(ValueError, match="attn_placement='middle' is unknown"):
        attention_flags([1, 2], "middle")


def test_arch_grid_2x2_with_wandb_groups_and_report(tmp_path: Path) -> None:
    result = run_train_cli(
        ["hparams_search=unet_arch", "logger=[csv,wandb]", "logger.wandb.offline=true", *ARCH_TINY],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]

    # W&B: one run per job, all in the sweep's group, named by the job's overrides
    runs = [run_info(read_records(f)) for f in sweep.glob("*/wandb/offline-run-*/run-*.wandb")]
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    assert {r.run_group for r in runs} == {f"train-{sweep.name}"}
    assert any("attn_placement=lowest" in r.display_name for r in runs)

    report = run_report(sweep)
    assert report.returncode == 0, report.stderr
    table = pd.read_csv(sweep / "report.csv")
    assert len(table) == 4 and set(table.status) == {"completed"}
    assert set(table.overrides) == {
        f"model.net.ch_mults={m} attn_placement={a}"
        for m in ("[1,2]", "[1,2,2]")
        for a in ("none", "lowest")
    }
    assert table.params.nunique() == 4  # four different architectures
    assert (table.best_val_loss > 0).all() and (table.img_per_s > 0).all()
    md = (sweep / "report.md").read_text()
    assert "| rank | job | samples | overrides | status | params |" in md
    assert "Ranked by best `val/loss_ema`" in md and (sweep / "report.html").is_file()
    with Image.open(sweep / "report.png") as img:
        assert img.size[0] > 300


def test_mismatched_sweep_is_rejected_before_any_job(tmp_path: Path) -> None:
    tiny = [o for o in CLI_TINY if not o.startswith(("model.net.ch_mults", "model.net.is_attn"))]
    result = run_train_cli(
        [
            "-m",
            "model.net.ch_mults=[1,2],[1,2,2]",
            "model.net.is_attn=[false,true],[true,true,true]",
            *tiny,
        ],
        tmp_path,
    )
    assert result.returncode != 0
    assert "2 of 4 sweep jobs have invalid configs; no job was launched" in result.stderr
    assert "model.net.ch_mults=[1,2] model.net.is_attn=[True,True,True]" in result.stderr
    assert "Traceback" not in result.stderr
    sweep_root = tmp_path / "train" / "multiruns"
    assert not sweep_root.exists() or not any(sweep_root.rglob("status.json"))


def test_failed_job_is_recorded_and_the_sweep_goes_on_with_joblib(tmp_path: Path) -> None:
    """A folder dataset with no images fails when its data is read (the up-front check builds
    it fine): that job fails, the other completes."""
    result = run_train_cli(
        [
            "-m",
            "hydra/launcher=local_parallel",
            "data.dataset=digits,folder",
            f"data.root={tmp_path / 'no_images'}",
            *CLI_TINY,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    statuses = {
        p.name: json.loads((p / "status.json").read_text()) for p in sweep.iterdir() if p.is_dir()
    }
    assert statuses["0"]["status"] == "completed"
    assert statuses["1"]["status"] == "failed"
    assert "no_images" in statuses["1"]["error"]
    frame = run_report(sweep)
    assert "job 1 (failed)" in frame.stdout
    # the failed job's row is marked, its values empty (not 0), its error shortened
    assert "| - | 1 | - | data.dataset=folder | **failed** | - |" in frame.stdout
    table = pd.read_csv(sweep / "report.csv")
    assert table.status.tolist() == ["completed", "failed"]
    assert pd.isna(table.best_val_loss[1]) and table.best_val_loss[0] > 0


def test_optuna_study_goes_on_past_failed_trials(tmp_path: Path) -> None:
    """At 6x6 px the searched ch_mults=[1,2,2] / [1,2,4] cannot work (6 is not divisible by 4):
    those trials fail, are recorded as failed, and the study goes on to the end."""
    result = run_train_cli(
        [
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=4",
            "data.image_size=6",
            *ARCH_TINY,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    statuses = [json.loads(p.read_text())["status"] for p in sweep.glob("*/status.json")]
    assert sorted(set(statuses)) == ["completed", "failed"] and len(statuses) == 4, statuses
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "model.net.ch_mults: '[1,2]'" in results  # the one valid


def test_slurm_launcher_config_follows_the_trainer(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
        ],
        tmp_path,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.partition == "gpu"
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2
