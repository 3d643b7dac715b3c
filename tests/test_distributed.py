"""DDP on 2 CPU processes: single runs and multiruns, one output folder per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import CLI_TINY, run_train_cli

pytestmark = pytest.mark.slow


def _only_child(path: Path) -> Path:
    children = [p for p in path.iterdir() if p.is_dir()]
    assert len(children) == 1, children
    return children[0]


def test_ddp_sim_end_to_end_writes_one_run_folder(tmp_path: Path) -> None:
    result = run_train_cli(["trainer=ddp_sim", *CLI_TINY], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = _only_child(tmp_path / "train" / "runs")  # not one folder per rank
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed"
    # global batch 32 over 2 ranks: 16 per device, 3 steps each, in lock-step
    assert status["metrics"]["global_step"] == 3
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and int(ckpt["state_dict"]["ema.n_averaged"]) == 3
    assert (run_dir / "samples" / "final.png").is_file()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp"])
def test_two_job_multirun_with_ddp_sim(tmp_path: Path, strategy: str) -> None:
    """`ddp` re-launches train.py per rank: each rank must run its job, not the whole sweep."""
    result = run_train_cli(
        [
            "-m",
            "trainer=ddp_sim",
            f"trainer.strategy={strategy}",
            "model.optimizer.lr=1e-3,2e-3",
            *CLI_TINY,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _only_child(tmp_path / "train" / "multiruns")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "completed", status
        ckpt = torch.load(
            sweep / job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
        )
        assert ckpt["global_step"] == 3
    assert not (tmp_path / "train" / "runs").exists()  # no stray per-rank run folders
    assert (result.stdout + result.stderr).count("MEMBER: 2/2") == 2  # both jobs ran 2 ranks
