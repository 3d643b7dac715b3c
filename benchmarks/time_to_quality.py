"""Time to quality: sample quality of training recipes against training wall time and images seen.

    python benchmarks/time_to_quality.py                        # today's default vs the candidates
    python benchmarks/time_to_quality.py --candidates default --repeats 1 --every 120
    python benchmarks/time_to_quality.py --markdown benchmarks/results/time_to_quality.md \\
        --png benchmarks/results/time_to_quality.png

Each candidate is `python train.py` with its overrides (`CANDIDATES`), run as a user runs it, in
its own process, with the same threads. Runs alternate: round 1 runs the candidates in one order,
round 2 in the next (rotated) order, and so on, so machine load from elsewhere falls on all of
them. Every `--every` optimiser steps a checkpoint is kept; training wall time and images seen at
that step come from `TrainingClock` (training_clock.py, added to the run): seconds since training
started, validation included (a user waits for it), start-up and sample grids (turned off) not.

Each checkpoint's EMA weights are then judged on `--num` samples (DPM-Solver++ with 20 model
calls by default: 0.95 of DDPM-1000's score in benchmarks/results/sampler_quality.md) by
`FrechetJudge` of digits_quality.py: the Frechet distance to 500 real digits in a digits
classifier's features, over the same distance between two sets of real digits (the floor,
measured in this run). The bar: ratio <= 1.5, all ten digits, none under 5% of the samples.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # digits_quality, beside this file

from digits_quality import FrechetJudge, make_sampler  # noqa: E402

from ddpm_unet.models.samplers import Sampler  # noqa: E402
from ddpm_unet.sample import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATIO_BAR = 1.5
MIN_CLASS_SHARE = 0.05

# name -> train.py overrides. "default" is `python train.py` as it is now.
CANDIDATES: dict[str, list[str]] = {
    "default": [],
    # the default before this benchmark: two residual blocks per level, 960 steps at a constant
    # learning rate of 2e-3, EMA decay 0.995
    "previous_default": [
        "trainer.max_epochs=160",
        "model.net.n_blocks=2",
        "model.optimizer.lr=2e-3",
        "model.scheduler.decay=none",
        "model.ema_decay=0.995",
    ],
    # the default's schedule on the previous network, 384 steps
    "short_cosine": ["trainer.max_epochs=64", "model.net.n_blocks=2"],
}


def train(name: str, overrides: list[str], run_dir: Path, every: int) -> float:
    """Run `python train.py` for one candidate, keeping a checkpoint every `every` steps.

    Returns the process's wall time in seconds (start-up, training, grids and all).
    """
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *overrides,
        f"hydra.run.dir={run_dir}",
        "logger=csv",
        "extras.print_config=false",
        "callbacks.sample_grid=null",  # grids are not training; the judge samples instead
        "+callbacks.clock._target_=training_clock.TrainingClock",
        f"+callbacks.clock.path={run_dir}/clock.json",
        "+callbacks.progress_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.progress_checkpoint.dirpath={run_dir}/progress",
        "+callbacks.progress_checkpoint.filename='step_{step:05d}'",  # quoted: braces
        f"+callbacks.progress_checkpoint.every_n_train_steps={every}",
        "+callbacks.progress_checkpoint.save_top_k=-1",
        "+callbacks.progress_checkpoint.auto_insert_metric_name=false",
    ]
    print(f"[{name}] {shlex.join(cmd[1:])}", flush=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return time.perf_counter() - start


def at_step(run_dir: Path, step: int) -> tuple[float, int]:
    """(training seconds, images seen) when optimiser step `step` had finished (TrainingClock)."""
    rows = json.loads((run_dir / "clock.json").read_text())
    for done, seconds, images in rows:
        if done >= step:
            return seconds, images
    raise RuntimeError(f"{run_dir}/clock.json ends before step {step}")


def judge_run(
    name: str, rnd: int, run_dir: Path, judge: FrechetJudge, num: int, sampler: Sampler
) -> list[dict]:
    rows = []
    for ckpt in sorted((run_dir / "progress").glob("step_*.ckpt")):
        step = int(ckpt.stem.split("_")[1])
        model = load_model(str(ckpt), "cpu")
        with torch.no_grad():
            samples = model.sample_images(num, sampler, seed=0, batch_size=250)
        images = ((samples[:, 0].reshape(num, -1).numpy() + 1) / 2).clip(0, 1)
        seconds, seen = at_step(run_dir, step)
        score = judge.score(images)
        rows.append(
            {
                "candidate": name,
                "round": rnd,
                "step": step,
                "train_s": seconds,
                "images_seen": seen,
                **score,
            }
        )
        print(
            f"[{name} r{rnd}] step {step:5d}  {seconds:7.1f} s  {seen:8,d} img  "
            f"FD ratio {score['ratio']:.2f}  min class share {score['min_class_share']:.3f}",
            flush=True,
        )
    return rows


def meets_bar(row: dict) -> bool:
    return row["ratio"] <= RATIO_BAR and row["min_class_share"] >= MIN_CLASS_SHARE


def markdown(rows: list[dict], walls: dict, judge: FrechetJudge, args: argparse.Namespace) -> str:
    lines = [
        "# Time to quality on the built-in digits",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}; load average at end: "
        + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        f"- command: `python benchmarks/time_to_quality.py {shlex.join(sys.argv[1:])}`",
        f"- samples: {args.num} per checkpoint from the EMA weights, {args.sampler} sampler, "
        f"{args.steps} steps",
        f"- judge: Frechet distance in a digits MLP's features, {judge.n_ref} samples vs "
        f"{judge.n_ref} real digits; real-vs-real floor in this run: {judge.floor:.4f}",
        f"- bar: FD ratio <= {RATIO_BAR}, all ten digits, each >= {MIN_CLASS_SHARE:.0%} of samples",
        "- train s: seconds since training started (validation in, start-up and grids out); "
        "process wall time (all of it) in the last table",
        "",
        "| candidate | round | step | train s | images seen | FD ratio | min class share | bar |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['candidate']} | {r['round']} | {r['step']} | {r['train_s']:.1f} | "
            f"{r['images_seen']:,} | {r['ratio']:.2f} | {r['min_class_share']:.3f} | "
            f"{'yes' if meets_bar(r) else 'no'} |"
        )
    lines += [
        "",
        "| candidate | overrides | round | process wall s | first step at the bar | its train s |",
        "|---|---|---|---|---|---|",
    ]
    for (name, rnd), wall in walls.items():
        ok = [r for r in rows if r["candidate"] == name and r["round"] == rnd and meets_bar(r)]
        first = min(ok, key=lambda r: r["step"]) if ok else None
        lines.append(
            f"| {name} | `{' '.join(CANDIDATES[name]) or '(none)'}` | {rnd} | {wall:.0f} | "
            f"{first['step'] if first else '-'} | "
            f"{format(first['train_s'], '.0f') if first else '-'} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rnd in sorted({(r["candidate"], r["round"]) for r in rows}):
        run = sorted(
            (r for r in rows if r["candidate"] == name and r["round"] == rnd),
            key=lambda r: r["step"],
        )
        for ax, key in zip(axes, ("train_s", "images_seen")):
            ax.plot(
                [r[key] for r in run],
                [r["ratio"] for r in run],
                marker="o",
                label=f"{name} (round {rnd})",
            )
    for ax, label in zip(axes, ("training wall time (s)", "images seen")):
        ax.axhline(RATIO_BAR, color="red", linestyle="--", label=f"bar: {RATIO_BAR}x floor")
        ax.axhline(1.0, color="grey", linestyle=":", label="real digits (floor)")
        ax.set_xlabel(label)
        ax.set_ylabel("FD / real-vs-real FD")
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Sample quality of the digits recipes against training time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES)
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds (rotated order each round)")
    parser.add_argument("--every", type=int, default=120, help="checkpoint every N steps")
    parser.add_argument("--num", type=int, default=500, help="samples judged per checkpoint")
    parser.add_argument("--sampler", default="dpm_solver", choices=["ddpm", "ddim", "dpm_solver"])
    parser.add_argument("--steps", type=int, default=20, help="the judge's sampler steps")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's noise")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="appended to every candidate (smoke tests)"
    )
    parser.add_argument("--work-dir", type=Path, default=ROOT / "logs" / "time_to_quality")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="all rows, for later plots")
    args = parser.parse_args()

    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    work = args.work_dir / stamp
    work.mkdir(parents=True)
    order = list(args.candidates)
    runs, walls = [], {}
    for rnd in range(1, args.repeats + 1):
        for name in order:
            run_dir = work / f"{name}_r{rnd}"
            walls[(name, rnd)] = train(
                name, [*CANDIDATES[name], *args.overrides], run_dir, args.every
            )
            runs.append((name, rnd, run_dir))
        order = order[1:] + order[:1]
    judge = FrechetJudge(n_ref=min(500, args.num))
    sampler = make_sampler(args.sampler, args.steps, args.eta)
    rows = [
        row
        for name, rnd, run_dir in runs
        for row in judge_run(name, rnd, run_dir, judge, args.num, sampler)
    ]
    text = markdown(rows, walls, judge, args)
    print(text)
    for path, write in (
        (args.markdown, lambda p: p.write_text(text)),
        (args.json, lambda p: p.write_text(json.dumps(rows, indent=1))),
        (args.png, lambda p: plot(rows, p)),
    ):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)


if __name__ == "__main__":
    main()
