"""`hydra/launcher=ray`: what each job asks Ray for, jobs refused up front, and a real sweep.

The end-to-end test is one sweep (Ray's start-up is the slow part): three tiny jobs on 2 CPUs.
Jobs 0 and 1 train at the same time; job 2 kills its own Ray worker (SIGKILL, as the kernel's
out-of-memory killer would), which is recorded as a failed job while the sweep goes on. Then the
report ranks the sweep.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from ddpm_unet.utils.launchers import warn_if_jobs_share_devices
from hydra_plugins.ddpm_unet_launchers.ray_launcher import init_options, job_remote_options
from tests.conftest import (
    CLI_TINY,
    CONFIG_DIR,
    TINY_MODEL,
    compose_train,
    run_report,
    run_train_cli,
)
from tests.wandb_records import read_records, run_info

# Hydra's note that configs/hydra/launcher/ray.yaml is matched to the plugin's schema of that name
# (expected; train.py hides it too, see ddpm_unet.utils.launchers)
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/ray' is validated:UserWarning")


def _job_requests(sweep: list[str], jobs: list[list[str]]) -> list[dict]:
    """Each job's `ray.remote` options, composed as the launcher composes a sweep's jobs."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        master = compose("train", overrides=sweep, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        return [job_remote_options(loader.load_sweep_config(master, job)) for job in jobs]


def test_each_job_asks_ray_for_its_own_trainer_devices() -> None:
    """GPU trainers ask for trainer.devices GPUs, CPU trainers for none; one CPU per process.
    Resolved per job: jobs of one sweep that differ in trainer ask for different things."""
    gpu1, gpu3, cpu = _job_requests(
        ["hydra/launcher=ray"],
        [["trainer=gpu"], ["trainer=gpu", "trainer.devices=3"], ["trainer=cpu"]],
    )
    assert gpu1 == {"num_gpus": 1, "num_cpus": 1, "max_retries": 0}
    assert (gpu3["num_gpus"], gpu3["num_cpus"]) == (3, 3)
    assert (cpu["num_gpus"], cpu["num_cpus"]) == (0, 1)
    # the same from the command line's view (`--cfg all --resolve` shows this)
    cfg = compose_train(["hydra/launcher=ray", "trainer=gpu", "trainer.devices=2"])
    remote = OmegaConf.to_container(cfg.hydra.launcher.ray.remote, resolve=True)
    assert remote["num_gpus"] == 2 and cfg.hydra.launcher._target_.endswith("PerJobRayLauncher")
    GlobalHydra.instance().clear()


def test_ray_init_starts_a_local_ray_or_connects_to_a_cluster() -> None:
    local = init_options(OmegaConf.create({"address": None, "num_cpus": 2, "num_gpus": None}))
    assert local["num_cpus"] == 2 and "num_gpus" not in local and "address" not in local
    assert local["object_store_memory"] > 0  # a small store for a local sweep
    cluster = init_options(
        OmegaConf.create({"address": "10.0.0.1:6379", "num_cpus": 2, "include_dashboard": False})
    )
    # Ray refuses CPU counts and object-store sizes when connecting to a running cluster
    assert cluster == {"address": "10.0.0.1:6379"}


@pytest.mark.slow
def test_ddp_under_ray_is_refused_before_any_job(tmp_path: Path) -> None:
    result = run_train_cli(
        ["-m", "hydra/launcher=ray", "trainer=ddp_sim", "trainer.devices=1,2", *TINY_MODEL],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "1 problem(s) in 2 sweep job(s) for hydra/launcher=ray; no job was launched" in (
        result.stderr
    )
    assert "#1 trainer=ddp_sim trainer.devices=2" in result.stderr
    assert "use trainer.devices=1" in result.stderr and "Traceback" not in result.stderr
    assert "validated against ConfigStore schema" not in result.stderr  # no deprecation noise
    assert not list(tmp_path.rglob("status.json"))


def test_local_parallel_warns_that_gpu_jobs_share_devices(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_train(["hydra/launcher=local_parallel", "trainer=gpu"], tmp_path)
    with caplog.at_level("WARNING"):
        warn_if_jobs_share_devices(cfg)
    assert "runs 2 jobs at once and they share the GPUs" in caplog.text
    assert "hydra/launcher=ray" in caplog.text
    caplog.clear()
    cfg = compose_train(["hydra/launcher=local_parallel", "trainer=cpu"], tmp_path)
    warn_if_jobs_share_devices(cfg)
    assert not caplog.text
    GlobalHydra.instance().clear()


# Extra callbacks, one per job: two that do nothing, and one that kills the job's Ray worker.
JOB_CALLBACKS = (
    "+callbacks.extra="
    "{_target_:lightning.pytorch.callbacks.Callback},"
    "{_target_:lightning.pytorch.callbacks.LambdaCallback},"
    "{_target_:signal.raise_signal,_args_:[9]}"
)


@pytest.mark.slow
def test_ray_runs_jobs_side_by_side_records_a_dead_worker_and_reports(tmp_path: Path) -> None:
    result = run_train_cli(
        [
            "-m",
            "hydra/launcher=ray",
            "hydra.launcher.ray.init.num_cpus=2",  # a 2-core machine: 2 one-CPU jobs at once
            "+hydra.launcher.ray.remote.max_calls=1",  # any ray.remote option (not .options())
            JOB_CALLBACKS,
            "logger=[csv,wandb]",
            "logger.wandb.offline=true",
            *CLI_TINY,
        ],
        tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # each job asked Ray for its trainer's devices: one CPU process, no GPU
    asked = re.findall(r"#(\d) : .*\(Ray: num_gpus=0, num_cpus=1\)", result.stdout + result.stderr)
    assert sorted(asked) == ["0", "1", "2"], (result.stdout + result.stderr)[-4000:]

    (sweep,) = list((tmp_path / "train" / "multiruns").iterdir())
    status = {n: json.loads((sweep / n / "status.json").read_text()) for n in ("0", "1", "2")}
    assert [status[n]["status"] for n in ("0", "1", "2")] == ["completed", "completed", "failed"]
    # the two trainings ran at the same time: their spans overlap
    first, second = status["0"], status["1"]
    assert max(first["start"], second["start"]) < min(first["end"], second["end"]), status
    # the job whose worker died: recorded by the launcher, with Ray's reason
    assert "Worker" in status["2"]["error"] or "worker" in status["2"]["error"], status["2"]

    for n in ("0", "1"):  # one folder per job with what a run leaves
        job = sweep / n
        assert (job / ".hydra" / "config.yaml").is_file() and (job / "train.log").is_file()
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == status[n]["metrics"]["global_step"] > 0

    # W&B: one run per completed job, grouped by the sweep
    runs = [run_info(read_records(f)) for f in sweep.glob("*/wandb/offline-run-*/run-*.wandb")]
    assert len(runs) == 2 and {r.run_group for r in runs} == {f"train-{sweep.name}"}

    report = run_report(sweep)
    assert report.returncode == 0, report.stderr
    assert "ranked by val/loss_ema" in report.stdout
    table = pd.read_csv(sweep / "report.csv")
    assert table.status.tolist() == ["completed", "completed", "failed"]
    assert table["rank"][:2].tolist() == [1, 2]
    assert table.best_val_loss_ema[0] <= table.best_val_loss_ema[1]
    md = (sweep / "report.md").read_text()
    assert "Ranked by best `val/loss_ema`" in md
    for job, path in re.findall(r"!\[job (\d+)\]\(([^)]+)\)", md):
        with Image.open(sweep / path) as img:  # the job's real grid, from a relative link
            pixels = np.asarray(img.convert("L"))
        assert path == f"{job}/samples/final.png" and pixels.max() > pixels.min()
    html = (sweep / "report.html").read_text()
    assert html.count('src="0/samples/final.png"') == 1 and 'src="report.png"' in html
