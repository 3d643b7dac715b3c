"""The README is a contract: every `python ...` / `make ...` command in it runs here, verbatim.

The commands are read from README.md's fenced `bash` blocks (continuation lines joined, comments
dropped) and run in order, in a fresh copy of the repository (its tracked and untracked,
not-ignored files; the test suite's `.venv` is linked in), from the copy's root, with no path
overrides. Only the documented shrinking overrides of `README.md#testing-the-readme` are
appended (few steps, a tiny model, stand-in Inception weights, W&B offline). Commands that need
what this machine lacks (a GPU, a SLURM cluster) are composed and resolved instead (`--cfg all
--resolve`, the first value of each sweep), which checks that every name and value in them
exists. Each command's promised outputs are checked.

A command that is in the README but matches no rule here fails the test: a new command needs a
rule (and so a check of what it promises).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from ddpm_unet.metrics.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAME,
    make_random_inception_weights,
)
from tests.conftest import ROOT, compose_config
from tests.test_data import write_mnist

pytestmark = pytest.mark.slow

README = ROOT / "README.md"

# --------------------------------------------------------------------------- shrinking overrides
# The README documents these lists (section "Testing the README"); keep the two in step.
TINY_MODEL = [
    "model.net.n_channels=16",
    "model.net.ch_mults=[1,2]",
    "model.net.is_attn=[false,true]",
    "model.net.n_blocks=1",
    "model.diffusion.num_timesteps=50",
]
SHORT_RUN = [
    "data.batch_size=32",
    "model.scheduler.warmup_steps=2",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "callbacks.sample_grid.sampler.steps=3",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.sample_grid.nrow=2",
]
FID_SHORT = [  # Inception runs at 299x299 px: a few images each
    "callbacks.fid.every_n_epochs=1",
    "callbacks.fid.num_samples=12",
    "callbacks.fid.num_real=12",
    "callbacks.fid.feature=64",  # the same code path without the 2048-d matrix square root
]
SAMPLE_SHORT = ["sampler.steps=5"]  # the tiny model has T=50; DDIM takes 5 of them
EVAL_SHORT = [  # DDPM runs all T=50 steps of the tiny model
    "num_samples=10",
    "num_reference=10",
    "kid_subset_size=5",
    "isc_splits=2",
    "save_cpu_ram=true",
    "feature_layer_fid=64",  # the same code path; 2048's matrix square root costs ~2 s a job
]
# An architecture sweep keeps its own ch_mults/attention; everything else is shrunk.
ARCH_SHORT = [
    o for o in TINY_MODEL if not o.startswith(("model.net.ch_mults", "model.net.is_attn"))
]
BENCH_SHORT = 'ARGS="--configs unet_small --batch-size 2 --steps 1 --warmup 0 --attn-sizes"'


# --------------------------------------------------------------------------- reading the README
def readme_commands(text: str) -> list[str]:
    """The `python ...`, `make ...` and `VAR=value python ...` commands of the bash blocks."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if "#" in line:  # drop trailing comments (no command here has a literal '#')
                line = line[: line.index("#")].strip()
            if re.match(r"^([A-Z_]+=\S+ )*(python|make) ", line + " "):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


# --------------------------------------------------------------------------- what a run leaves
def newest(pattern: str, base: Path) -> Path:
    """The most recently modified path matching `pattern` under `base`."""
    found = sorted(base.glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"nothing matches {pattern} under {base}"
    return found[-1]


def assert_grid_has_digits(path: Path) -> None:
    """A sample grid PNG with both dark and bright pixels (not a black or blank image)."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float32)
    assert pixels.min() < 64 and pixels.max() > 192, (path, pixels.min(), pixels.max())


def assert_completed_run(run: Path, csv: bool = True) -> dict:
    """A finished training run: status, checkpoint with its step, grid, CSV metrics."""
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed", status
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == status["metrics"]["global_step"] > 0
    assert_grid_has_digits(run / "samples" / "final.png")
    if not csv:
        return status
    metrics = pd.read_csv(newest("csv/version_*/metrics.csv", run))
    losses = metrics.filter(like="train/loss").stack().dropna()  # _step and/or _epoch columns
    assert len(losses) and losses.between(0, 10).all(), metrics.columns
    return status


def assert_sweep(sweep: Path, jobs: int) -> list[dict]:
    """A multirun folder whose `jobs` jobs all completed."""
    statuses = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/status.json"))]
    assert len(statuses) == jobs, (sweep, statuses)
    assert {s["status"] for s in statuses} == {"completed"}, statuses
    return statuses


# --------------------------------------------------------------------------- the rules
@dataclass
class Ran:
    """What one command did: its output and the repository copy it ran in."""

    repo: Path
    command: str
    stdout: str
    stderr: str


@dataclass
class Rule:
    """How a README command matching `pattern` is run and what it must leave behind."""

    pattern: str
    append: list[str] = field(default_factory=list)
    check: Callable[[Ran], None] = lambda ran: None
    compose_only: bool = False  # needs a GPU or a cluster: compose (`--cfg all --resolve`) only
    skip: str = ""  # why the command is not run here


def _logs(ran: Ran) -> Path:
    return ran.repo / "logs"


def check_train(ran: Ran) -> None:
    assert_completed_run(newest("train/runs/*/", _logs(ran)))


def check_mnist(ran: Ran) -> None:
    run = newest("train/runs/*/", _logs(ran))
    assert_completed_run(run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["run_config"]["data"]["dataset"] == "mnist"


def check_resume(ran: Ran) -> None:
    runs = sorted(_logs(ran).glob("train/runs/*/status.json"), key=lambda p: p.stat().st_mtime)
    before, after = (json.loads(p.read_text()) for p in runs[-2:])
    assert after["status"] == "completed"
    assert after["metrics"]["global_step"] > before["metrics"]["global_step"]


def check_debug(ran: Ran) -> None:
    status = json.loads(newest("debug/runs/*/status.json", _logs(ran)).read_text())
    assert status["status"] == "completed", status


def check_fid(ran: Ran) -> None:
    run = newest("train/runs/*/", _logs(ran))
    status = assert_completed_run(run)
    assert np.isfinite(status["metrics"]["val/fid"])
    assert list((run / "checkpoints").glob("best_fid_*.ckpt"))


def check_summary(ran: Ran) -> None:
    assert "168,899,011" in ran.stdout


def check_sample(num: int, pngs: bool) -> Callable[[Ran], None]:
    def check(ran: Ran) -> None:
        run = newest("sample/runs/*/", _logs(ran))
        with np.load(run / "samples.npz", allow_pickle=False) as data:
            images = data["images"]
        assert images.shape == (num, 8, 8, 1) and images.dtype == np.uint8
        assert_grid_has_digits(run / "grid.png")
        assert len(list((run / "pngs").glob("*.png"))) == (num if pngs else 0)

    return check


def check_eval(wandb: bool) -> Callable[[Ran], None]:
    def check(ran: Ran) -> None:
        run = newest("eval/runs/*/", _logs(ran))
        metrics = json.loads((run / "metrics.json").read_text())
        for key in ("fid", "kid_mean", "isc_mean"):
            assert np.isfinite(metrics[key]), metrics
        assert ("precision" in metrics) == wandb  # the second command adds metrics.prc=true
        assert bool(list(run.glob("wandb/offline-run-*"))) == wandb

    return check


def check_sweep(jobs: int) -> Callable[[Ran], None]:
    return lambda ran: assert_sweep(newest("train/multiruns/*/", _logs(ran)), jobs)


def check_report(ran: Ran) -> None:
    """Ranked by val/loss_ema (no FID in these sweeps), each job's grid linked and real."""
    sweep = newest("train/multiruns/*/", _logs(ran))
    table = pd.read_csv(sweep / "report.csv")
    assert len(table) == 4 and set(table.status) == {"completed"}
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table.best_val_loss_ema.is_monotonic_increasing
    md = (sweep / "report.md").read_text()
    assert "Ranked by best `val/loss_ema`" in md and "| rank | job | samples |" in md
    grids = re.findall(r"!\[job (\d+)\]\(([^)]+)\)", md)
    assert sorted(job for job, _ in grids) == ["0", "1", "2", "3"]
    for _, path in grids:
        assert_grid_has_digits(sweep / path)
    assert all(f'src="{path}"' in (sweep / "report.html").read_text() for _, path in grids)
    with Image.open(sweep / "report.png") as img:
        assert img.size[0] > 300


def check_ray_sweep(ran: Ran) -> None:
    """The 4-job grid on a local Ray: all completed, two at a time (2 cores, 1 CPU per job)."""
    statuses = assert_sweep(newest("train/multiruns/*/", _logs(ran)), 4)
    spans = sorted((s["start"], s["end"]) for s in statuses)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans  # some jobs overlapped
    assert "(Ray: num_gpus=0, num_cpus=1)" in ran.stdout + ran.stderr


def check_ray_gpu(ran: Ran) -> None:
    """Each job asks Ray for one GPU and one CPU; a local Ray is started (no address)."""
    check_compose(ran)
    for line in ("PerJobRayLauncher", "num_gpus: 1", "num_cpus: 1", "address: null"):
        assert line in ran.stdout, line


def check_ray_cluster(ran: Ran) -> None:
    check_compose(ran)
    for line in ("PerJobRayLauncher", "address: auto", "num_gpus: 1"):
        assert line in ran.stdout, line


def check_optuna(fid: bool) -> Callable[[Ran], None]:
    def check(ran: Ran) -> None:
        sweep = newest("train/multiruns/*/", _logs(ran))
        statuses = assert_sweep(sweep, 1 if fid else 2)
        results = (sweep / "optimization_results.yaml").read_text()
        assert "best_params" in results and "model.optimizer.lr" in results
        if fid:
            assert all(np.isfinite(s["metrics"]["val/fid"]) for s in statuses)

    return check


def check_wandb(ran: Ran) -> None:
    run = newest("train/runs/*/", _logs(ran))
    assert_completed_run(run, csv="csv" in ran.command)
    media = list(run.glob("wandb/offline-run-*/files/media/images/*.png"))
    assert media, "no sample grid in the W&B run"
    for png in media:
        assert_grid_has_digits(png)  # W&B's grids were black once


def check_run_config(ran: Ran) -> None:
    """A completed run whose checkpoint holds the command's overrides (optimiser, target, ...)."""
    run = newest("train/runs/*/", _logs(ran))
    assert_completed_run(run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for override in ran.command.split(" ")[2:]:
        if override.startswith("model.") and override not in TRAIN_SHORT:  # the README's own
            key, value = override.split("=", 1)
            node = ckpt["run_config"]
            for part in key.split("."):
                node = node[part]
            assert str(node) == value, (key, node)


def check_sample_ranks(ran: Ran) -> None:
    """Two CPU processes made the 64 images (`trainer=ddp_sim`), written by rank 0 once."""
    check_sample(64, pngs=False)(ran)
    run = newest("sample/runs/*/", _logs(ran))
    info = json.loads((run / "sample_info.json").read_text())
    assert info["world_size"] == 2 and info["generated"] == 64, info


def check_dpm_solver(ran: Ran) -> None:
    check_sample(64, pngs=False)(ran)
    run = newest("sample/runs/*/", _logs(ran))
    info = json.loads((run / "sample_info.json").read_text())
    assert info["sampler"] == "dpm_solver" and info["steps"] == 20, info


def _last_ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def check_init_from(ran: Ran) -> None:
    """A new run (its own folder, counting from step 0) that records where its weights came from."""
    run = newest("train/runs/*/", _logs(ran))
    status = assert_completed_run(run)
    source = re.search(r"init_from=(\S+)", ran.command).group(1)
    assert status["metrics"]["global_step"] == 2  # one epoch of 2 batches: a fresh step count
    assert _last_ckpt(run)["run_config"]["init_from"]["ckpt_path"] == source


def check_sample_nfe(sampler: str, nfe: int) -> Callable[[Ran], None]:
    def check(ran: Ran) -> None:
        check_sample(64, pngs=False)(ran)
        info = json.loads((newest("sample/runs/*/", _logs(ran)) / "sample_info.json").read_text())
        assert (info["sampler"], info["nfe"]) == (sampler, nfe), info

    return check


def check_eval_sweep(
    key: str, values: dict, steps: int, sampler: str | None = None
) -> Callable[[Ran], None]:
    """One job per value, each with its metrics.json: `values` maps the swept value to the model
    calls per image it must have counted; every job ran `steps` steps (of `sampler`, if given)."""

    def check(ran: Ran) -> None:
        jobs = sorted(newest("eval/multiruns/*/", _logs(ran)).glob("*/metrics.json"))
        metrics = [json.loads(p.read_text()) for p in jobs]
        assert {m[key]: m["nfe"] for m in metrics} == values, metrics
        assert {m["steps"] for m in metrics} == {steps}, metrics
        assert sampler is None or {m["sampler"] for m in metrics} == {sampler}, metrics
        assert all(np.isfinite(m["fid"]) for m in metrics)

    return check


def check_conditional_train(ran: Ran) -> None:
    run = newest("train/runs/*/", _logs(ran))
    assert_completed_run(run)
    checkpoint = _last_ckpt(run)
    assert checkpoint["run_config"]["model"]["net"]["num_classes"] == 10
    assert checkpoint["class_names"] == [str(k) for k in range(10)]


def check_conditional_sample(ran: Ran) -> None:
    run = newest("sample/runs/*/", _logs(ran))
    with np.load(run / "samples.npz", allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    assert images.shape == (600, 8, 8, 1) and labels.dtype == np.int64
    assert labels.tolist() == [i % 10 for i in range(600)]  # balanced: image i asks for i mod 10
    info = json.loads((run / "sample_info.json").read_text())
    assert info["guidance_scale"] == 2 and info["labels"] == labels.tolist(), info
    assert_grid_has_digits(run / "grid.png")


def check_compose(ran: Ran) -> None:
    assert "_target_" in ran.stdout, ran.stdout[-2000:]


def check_slurm(ran: Ran) -> None:
    """The launcher's SLURM geometry follows the trainer: 2 nodes x 4 GPUs, one task per GPU."""
    check_compose(ran)
    for line in ("SlurmLauncher", "nodes: 2", "gpus_per_node: 4", "tasks_per_node: 4"):
        assert line in ran.stdout, line


def first_job(command: str) -> str:
    """A sweep command reduced to its first job: no `-m`, the first value of each `a,b` list."""
    words = [w for w in command.split(" ") if w != "-m"]
    return " ".join(re.sub(r"=([^\[\],]*),.*$", r"=\1", w) if "[" not in w else w for w in words)


TRAIN_SHORT = [*TINY_MODEL, *SHORT_RUN]
RULES = [
    Rule(r"^make test$", skip="the test suite itself"),
    Rule(r"^make train$", append=[f'ARGS="{" ".join(TRAIN_SHORT)}"'], check=check_train),
    Rule(r"^make lint$"),
    Rule(r"^make format$"),
    Rule(r"^make bench$", append=[BENCH_SHORT], check=lambda r: _has(r, "ms/step")),
    Rule(r"^python train\.py$", append=TRAIN_SHORT, check=check_train),
    Rule(r"^python train\.py model=unet_small data=mnist$", TRAIN_SHORT, check_mnist),
    Rule(r"^python train\.py experiment=ddpm_cifar10$", compose_only=True, check=check_compose),
    Rule(r"^python train\.py experiment=ddpm_cifar10_cfg$", compose_only=True, check=check_compose),
    Rule(r"^python train\.py init_from=\S+$", TRAIN_SHORT, check_init_from),
    Rule(r"^python train\.py model\.net\.num_classes=10$", TRAIN_SHORT, check_conditional_train),
    Rule(r"^python sample\.py \S+ num_samples=600 labels=", SAMPLE_SHORT, check_conditional_sample),
    Rule(
        r"^python eval\.py -m \S+ guidance_scale=1,2,4$",
        EVAL_SHORT,
        check_eval_sweep("guidance_scale", {1: 20, 2: 20, 4: 20}, 20, "dpm_solver_sde"),
    ),
    Rule(
        r"^python sample\.py \S+ sampler=unipc sampler\.steps=8$",
        check=check_sample_nfe("unipc", 8),
    ),
    Rule(
        r"^python eval\.py -m \S+ sampler=euler,heun,unipc,dpm_solver sampler\.steps=8$",
        EVAL_SHORT,
        check_eval_sweep(
            "sampler",
            {"euler": 8, "heun": 15, "unipc": 8, "dpm_solver": 8},
            steps=8,
        ),
    ),
    Rule(r"^python train\.py trainer=gpu ", compose_only=True, check=check_compose),
    Rule(r"^python train\.py ckpt_path=\S+$", [*TRAIN_SHORT, "trainer.max_epochs=2"], check_resume),
    Rule(r"^python train\.py debug=fdr$", TINY_MODEL, check_debug),
    Rule(r"^python train\.py debug=overfit$", [*TRAIN_SHORT, "trainer.max_epochs=2"], check_debug),
    Rule(r"^python train\.py callbacks=fid$", [*TRAIN_SHORT, *FID_SHORT], check_fid),
    Rule(r"^python -m ddpm_unet\.utils\.summary ", check=check_summary),
    Rule(r"^python sample\.py \S+ num_samples=64$", check=check_sample(64, pngs=False)),
    Rule(r"^python sample\.py .*save_pngs=true", SAMPLE_SHORT, check_sample(64, pngs=True)),
    Rule(r"^python eval\.py ckpt_path=\S+ num_samples=\d+$", EVAL_SHORT, check_eval(False)),
    Rule(r"^python eval\.py .*logger=wandb", [*EVAL_SHORT, *SAMPLE_SHORT], check_eval(True)),
    Rule(
        r"^python eval\.py \S+ num_samples=\d+ trainer=ddp$", compose_only=True, check=check_compose
    ),
    Rule(r"^python sample\.py \S+ num_samples=64 trainer=ddp_sim$", check=check_sample_ranks),
    Rule(r"^python train\.py hparams_search=unet_arch$", [*ARCH_SHORT, *SHORT_RUN], check_sweep(4)),
    Rule(r"^python -m ddpm_unet\.report ", check=check_report),
    Rule(
        r"^python train\.py hparams_search=unet_arch \S", [*ARCH_SHORT, *SHORT_RUN], check_sweep(6)
    ),
    Rule(r"^python train\.py -m .*local_parallel", TRAIN_SHORT, check_sweep(3)),
    Rule(
        r"^python train\.py hparams_search=optuna$",
        [*ARCH_SHORT, *SHORT_RUN, "hydra.sweeper.n_trials=2"],
        check_optuna(fid=False),
    ),
    Rule(
        r"^python train\.py hparams_search=optuna callbacks=fid",
        [*ARCH_SHORT, *SHORT_RUN, *FID_SHORT, "hydra.sweeper.n_trials=1"],
        check_optuna(fid=True),
    ),
    Rule(r"^python train\.py -m hydra/launcher=slurm ", compose_only=True, check=check_slurm),
    Rule(
        r"^python train\.py -m hparams_search=unet_arch hydra/launcher=ray$",
        [*ARCH_SHORT, *SHORT_RUN],
        check_ray_sweep,
    ),
    Rule(  # before the next rule: the same command plus a cluster address
        r"^python train\.py -m hydra/launcher=ray .*init\.address=",
        compose_only=True,
        check=check_ray_cluster,
    ),
    Rule(
        r"^python train\.py -m hydra/launcher=ray trainer=gpu ",
        compose_only=True,
        check=check_ray_gpu,
    ),
    Rule(r"^(WANDB_MODE=offline )?python train\.py logger=", TRAIN_SHORT, check_wandb),
    Rule(r"^python train\.py model\.optimizer\._target_=", TRAIN_SHORT, check_run_config),
    Rule(r"^python train\.py model\.diffusion\.", TRAIN_SHORT, check_run_config),
    Rule(r"^python sample\.py \S+ sampler=dpm_solver ", check=check_dpm_solver),
]


def _has(ran: Ran, text: str) -> None:
    assert text in ran.stdout, ran.stdout[-2000:]


def rule_for(command: str) -> Rule:
    matches = [rule for rule in RULES if re.search(rule.pattern, command)]
    assert matches, f"README command without a rule in tests/test_readme.py: {command}"
    return matches[0]


# --------------------------------------------------------------------------- running them
@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the repository (as `git clone` of the working tree would give), with the
    suite's `.venv`, MNIST files in `data/` and stand-in Inception weights."""
    # The copy's `make` commands share this `.venv`: were its install stamp older than
    # pyproject.toml, they would reinstall the package in editable mode from the temporary copy,
    # and every later import of ddpm_unet (here and in the developer's shell) would read it.
    stamp, project = ROOT / ".venv" / ".installed", ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < project.stat().st_mtime:
        pytest.fail("pyproject.toml is newer than the .venv install: run `make install` first.")
    copy = tmp_path_factory.mktemp("readme") / "ddpm-unet"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)  # keeps mtimes: make sees .venv as up to date
    (copy / ".venv").symlink_to(ROOT / ".venv")
    write_mnist(copy / "data", n_train=64, n_test=32)  # real IDX files, read by torchvision
    make_random_inception_weights(copy / "inception" / INCEPTION_WEIGHTS_FILENAME, seed=0)
    return copy


def _placeholders(command: str, repo: Path) -> str:
    """`<ts>`/`...` in a documented path -> the run or sweep the earlier commands made."""
    logs = repo / "logs"
    if "ckpt_path=" in command or "init_from=" in command:
        ckpt = newest("train/runs/*/checkpoints/last.ckpt", logs).relative_to(repo)
        command = re.sub(r"(ckpt_path|init_from)=\S+", rf"\1={ckpt}", command)
    if "multiruns/<timestamp>" in command:
        sweep = newest("train/multiruns/*/", logs).relative_to(repo)
        command = command.replace("logs/train/multiruns/<timestamp>", str(sweep))
    return command


COMMANDS = readme_commands(README.read_text())


def is_sweep(command: str) -> bool:
    """Sweeps, their report and the launchers: one chain of commands, run by
    tests/test_readme_sweeps.py (its own copy of the repository, so the suite can run the two
    chains side by side); everything else runs here, in the README's order."""
    return bool(
        re.search(r"train\.py -m |hparams_search=|ddpm_unet\.report|hydra/launcher", command)
    )


def run_command(command: str, repo: Path) -> None:
    """Run one README `command` in `repo` as its rule says, then check what it promises."""
    rule = rule_for(command)
    if rule.skip:
        pytest.skip(rule.skip)
    line = _placeholders(command, repo)
    if rule.compose_only:
        # What `first_job(line) --cfg all --resolve` prints, composed in this process: every
        # name and value of the command exists and resolves (no process needed for that).
        script, *overrides = first_job(line).split(" ")[1:]
        cfg = compose_config(script.removesuffix(".py"), [*overrides, *rule.append], repo / "cfg")
        rule.check(Ran(repo, line, OmegaConf.to_yaml(cfg, resolve=True), ""))
        GlobalHydra.instance().clear()
        return
    line = " ".join([line, *rule.append])
    env = {
        **os.environ,
        "WANDB_MODE": "offline",  # no network: W&B writes its run files locally
        INCEPTION_WEIGHTS_ENV: str(repo / "inception" / INCEPTION_WEIGHTS_FILENAME),
        "PYTHONPATH": str(repo / "src"),  # the copy's code, not the suite's editable install
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("PROJECT_ROOT", None)
    done = subprocess.run(
        ["bash", "-c", f"source .venv/bin/activate && {line}"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=480,
        env=env,
    )
    assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rule.check(Ran(repo, line, done.stdout, done.stderr))


def test_readme_has_the_commands_users_start_with() -> None:
    assert {"make train", "make test", "python train.py"} <= set(COMMANDS)
    assert "python train.py hparams_search=unet_arch" in COMMANDS
    for command in COMMANDS:
        rule_for(command)  # every command is covered


@pytest.mark.parametrize("command", [c for c in COMMANDS if not is_sweep(c)])
def test_readme_command(command: str, repo: Path) -> None:
    run_command(command, repo)


def test_paths_are_anchored_at_the_project_root(tmp_path: Path) -> None:
    """Started from another folder, a run still writes under the repository's logs/ and reads
    its data/ (sweeps use the same `paths.log_dir`: the README's sweeps run above)."""
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--cfg", "all", "--resolve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"dir: {ROOT}/logs/train/runs/" in done.stdout
    assert f"dir: {ROOT}/logs/train/multiruns/" in done.stdout
    assert f"root: {ROOT}/data\n" in done.stdout
    assert not any(tmp_path.iterdir())  # nothing written where the command was started


@pytest.mark.parametrize("name", ["unet_small", "unet_ddpm_cifar10", "unet_seed"])
def test_parameter_counts_in_the_readme_are_the_configs(name: str) -> None:
    """The count the configs table gives each `model=` preset is that of the network its config
    builds (one number per preset: other layouts are named by what differs, e.g. "2 blocks")."""
    from hydra.utils import instantiate

    from tests.conftest import compose_train

    counts = re.findall(rf"`{name}` \([^)]*?([\d,]+) params", README.read_text())
    assert len(counts) == 1, counts
    data = "digits" if name == "unet_small" else "cifar10"  # the images each is made for
    net = instantiate(compose_train([f"model={name}", f"data={data}"]).model.net)
    assert int(counts[0].replace(",", "")) == sum(p.numel() for p in net.parameters())
    # a table row naming the preset and only a resolution gives the preset's own count
    for row in re.findall(rf"^\| {name} \(\d+x\d+\) \| ([\d,]+) \|", README.read_text(), re.M):
        assert row == counts[0], row
