"""DDP on 2 CPU processes under Hydra: every rank runs its own job, one output folder per job."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import CLI_TINY, run_train_cli


def test_the_private_lightning_hook_of_ddp_under_hydra_is_as_checked() -> None:
    """`ddpm_unet.utils.compat` replaces Lightning's private `_hydra_subprocess_cmd`: the launcher
    still calls it with one `local_rank`, so the replacement still takes effect; were it gone,
    installing names the Lightning version instead of every rank starting a run of its own."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    from ddpm_unet.utils import compat
    from ddpm_unet.utils.distributed import hydra_ddp_subprocess_cmd

    original = subprocess_script._hydra_subprocess_cmd
    assert list(inspect.signature(original).parameters) == ["local_rank"]
    launcher_source = inspect.getsource(subprocess_script._SubprocessScriptLauncher)
    assert "_hydra_subprocess_cmd(local_rank)" in launcher_source
    try:
        compat.install_hydra_ddp_launcher()
        assert subprocess_script._hydra_subprocess_cmd is hydra_ddp_subprocess_cmd
        del subprocess_script._hydra_subprocess_cmd
        with pytest.raises(RuntimeError, match=r"lightning .* has no .*_hydra_subprocess_cmd"):
            compat.install_hydra_ddp_launcher()
    finally:
        subprocess_script._hydra_subprocess_cmd = original


@pytest.mark.slow
def test_two_job_multirun_with_ddp_runs_each_job_on_two_ranks(tmp_path: Path) -> None:
    """`ddp` re-launches train.py per rank: each rank must run its job, in the job's folder, not
    the whole sweep nor a run folder of its own."""
    result = run_train_cli(
        [
            "-m",
            "trainer=ddp_sim",
            "trainer.strategy=ddp",
            "model.optimizer.lr=1e-3,2e-3",
            *CLI_TINY,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "completed", status
        # global batch 32 over 2 ranks: 16 per device, 3 steps each, in lock-step
        assert status["metrics"]["global_step"] == 3
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 3 and int(ckpt["state_dict"]["ema.n_averaged"]) == 3
        assert (sweep / job / "samples" / "final.png").is_file()
    assert not (tmp_path / "train" / "runs").exists()  # no stray per-rank run folders
    output = result.stdout + result.stderr
    assert output.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # both jobs ran 2 ranks
