"""Classifier-free guidance scale against class fidelity and diversity (conditional digits run).

    python benchmarks/guidance.py     # first trains `python train.py model.net.num_classes=10`
    python benchmarks/guidance.py --ckpt <run>/checkpoints/last.ckpt

A judge trained on real digits (`digits_quality.FrechetJudge`: an MLP on the digits outside two
held-out reference sets of 500; its accuracy on those 1000 held-out digits is reported) looks at
`--num` samples per guidance scale w (balanced labels: image i asks for digit i mod 10):
* accuracy: share of samples the judge assigns to the asked class (chance: 0.10);
* FD: Frechet distance of the samples' judge features to real digits (lower: closer to the real
  distribution, which needs diversity as well as fidelity), and its ratio to the floor (the FD
  of two real sets);
* nfe: model calls per image, counted (guidance other than 0 and 1 runs each call on 2N images).
Writes benchmarks/results/guidance.md and guidance.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # digits_quality, beside this file

from digits_quality import FrechetJudge, make_sampler  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from ddpm_unet.generation.core import generate_images  # noqa: E402
from ddpm_unet.generation.guidance import ModelCalls, resolve_labels  # noqa: E402
from ddpm_unet.sample import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0)


def train_conditional(run_dir: Path) -> Path:
    """`python train.py model.net.num_classes=10` (the default digits run, with classes)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        command = [
            sys.executable,
            "train.py",
            "model.net.num_classes=10",
            f"hydra.run.dir={run_dir}",
        ]
        subprocess.run(command, cwd=ROOT, check=True)
    return ckpt


def held_out_accuracy(judge: FrechetJudge, seed: int = 0) -> float:
    """The judge's accuracy on the 1000 real digits it was not trained on (its reference sets)."""
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.data))[: 2 * judge.n_ref]
    return float(judge.clf.score(digits.data[order] / 16.0, digits.target[order]))


def markdown(rows: list[dict], accuracy: float, ckpt: str, args: argparse.Namespace) -> str:
    lines = [
        "# Guidance scale: class fidelity against diversity (conditional digits run)",
        "",
        f"`python benchmarks/guidance.py --ckpt {ckpt}`: {args.num} samples per scale, "
        f"sampler {args.sampler} ({args.steps or 'default'} steps), seed {args.seed}, "
        "balanced labels.",
        f"Judge: MLP on real digits, held-out accuracy {accuracy:.3f}.",
        "",
        "| w | accuracy (asked class) | FD to real | FD / floor | nfe | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['w']:g} | {r['accuracy']:.3f} | {r['fd']:.2f} | {r['ratio']:.2f} | "
            f"{r['nfe']} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "w = 0 samples from the no-class token (accuracy near chance, 0.10, if the labels do the "
        "work); w = 1 is plain conditional sampling; larger w buys class fidelity with diversity, "
        "which the FD to real digits shows once it rises again.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [r["w"] for r in rows]
    fig, left = plt.subplots(figsize=(6, 4))
    left.plot(w, [r["accuracy"] for r in rows], "o-", color="tab:blue")
    left.set_xlabel("guidance scale w")
    left.set_ylabel("accuracy (asked class)", color="tab:blue")
    right = left.twinx()
    right.plot(w, [r["fd"] for r in rows], "s--", color="tab:red")
    right.set_ylabel("FD to real digits (judge features)", color="tab:red")
    left.set_title("Classifier-free guidance on the conditional digits run")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ckpt", default=None, help="a conditional digits checkpoint (else train one)"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=ROOT / "logs" / "benchmarks" / "guidance_run"
    )
    parser.add_argument("--num", type=int, default=600, help="samples per guidance scale")
    parser.add_argument("--sampler", default="dpm_solver", choices=["ddpm", "ddim", "dpm_solver"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    ckpt = Path(args.ckpt) if args.ckpt else train_conditional(args.run_dir)
    model = load_model(ckpt)
    if getattr(model, "num_classes", None) != 10:
        raise SystemExit(f"{ckpt} is not a 10-class conditional digits checkpoint")
    judge = FrechetJudge(n_ref=500)
    accuracy = held_out_accuracy(judge)
    labels = resolve_labels("balanced", args.num, 10)
    sampler = make_sampler(args.sampler, args.steps, 0.0)
    rows = []
    for w in args.scales:
        calls, start = ModelCalls(), time.perf_counter()
        images = generate_images(
            model.ema.module,
            model.diffusion,
            sampler,
            range(args.num),
            args.seed,
            (1, model.image_size, model.image_size),
            64,
            batch_size=600,
            labels=labels,
            guidance_scale=w,
            calls=calls,
        )
        flat = (
            ((images.clamp(-1, 1) + 1) / 2).reshape(args.num, -1).cpu().numpy().astype(np.float64)
        )
        score = judge.score(flat)
        row = {
            "w": w,
            "accuracy": float((judge.clf.predict(flat) == labels).mean()),
            "fd": score["fd"],
            "ratio": score["ratio"],
            "nfe": calls.nfe,
            "seconds": time.perf_counter() - start,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guidance.md").write_text(markdown(rows, accuracy, str(ckpt), args))
    (args.out / "guidance.json").write_text(
        json.dumps({"held_out_accuracy": accuracy, "rows": rows}, indent=2)
    )
    plot(rows, args.out / "guidance.png")
    print(f"judge held-out accuracy {accuracy:.3f}; wrote {args.out / 'guidance.md'}")


if __name__ == "__main__":
    main()
