"""Sample quality against model calls: DDPM-1000 and every sampler at 5, 8, 10, 15, 20 and 50
model calls, side by side on one digits checkpoint, judged by the classifier of
benchmarks/digits_quality.py.

    python benchmarks/sampler_quality.py logs/train/runs/<ts>/checkpoints/last.ckpt [--num 600]
    python benchmarks/sampler_quality.py <ckpt> --markdown benchmarks/results/sampler_quality.md \
        --json benchmarks/results/sampler_quality.json --plot benchmarks/results/sampler_quality.png

For each sampler: model calls per image, wall time for `--num` images (same seed and batch),
and on those images the SVM judge's share of confident images (top class probability >= 0.9),
mean top probability, classes present, and the share of near-black-or-white pixels; the
held-out real digits give the ceiling. `quality_vs_ddpm` is the confident share relative to
DDPM-1000's. A smaller `--samplers` list (e.g. `ddim:10 heun:8`) runs only those; `name:calls`
asks for at most `calls` model calls (Heun: `(calls + 1) // 2` steps, `2 steps - 1` calls).
With `--json`, rows already in that file are reused (same checkpoint, num and seed), so an
interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # digits_quality, beside this file

from digits_quality import summarize  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from ddpm_unet.models.samplers import (  # noqa: E402
    DDIM,
    DDPM,
    DPMSolver,
    DPMSolverSDE,
    Euler,
    EulerAncestral,
    Heun,
    Sampler,
    UniPC,
)
from ddpm_unet.sample import load_model  # noqa: E402

# Each with its config's defaults (configs/sampler/), but `steps`; DDIM deterministic (eta 0).
FAMILIES = {
    "ddim": lambda n: DDIM(steps=n),
    "dpm_solver": lambda n: DPMSolver(steps=n),
    "dpm_solver_karras": lambda n: DPMSolver(steps=n, sigmas="karras"),
    "dpm_solver_sde": lambda n: DPMSolverSDE(steps=n),
    "dpm_solver_sde_karras": lambda n: DPMSolverSDE(steps=n, sigmas="karras"),
    "unipc": lambda n: UniPC(steps=n),
    "unipc_karras": lambda n: UniPC(steps=n, sigmas="karras"),
    "euler": lambda n: Euler(steps=n),
    "euler_karras": lambda n: Euler(steps=n, sigmas="karras"),
    "euler_ancestral": lambda n: EulerAncestral(steps=n),
    "euler_ancestral_karras": lambda n: EulerAncestral(steps=n, sigmas="karras"),
    "heun": lambda n: Heun(steps=(n + 1) // 2),  # 2 steps - 1 calls <= n; sigmas=leading
    "heun_trailing": lambda n: Heun(steps=(n + 1) // 2, sigmas="trailing"),
    "heun_karras": lambda n: Heun(steps=(n + 1) // 2, sigmas="karras"),
}
CALLS = (5, 8, 10, 15, 20, 50)
DEFAULT_SAMPLERS = ["ddpm"] + [f"{name}:{n}" for name in FAMILIES for n in CALLS]


def parse_sampler(spec: str) -> Sampler:
    """`ddpm` or `name:calls` -> a sampler making at most `calls` model calls."""
    name, _, calls = spec.partition(":")
    return DDPM() if name == "ddpm" else FAMILIES[name](int(calls))


def plot(rows: list[dict], path: Path) -> None:
    """Judge score (confident share relative to DDPM-1000) against model calls, per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))

    def base_of(family: str) -> str:
        return family.removesuffix("_karras").removesuffix("_trailing")

    bases = list(dict.fromkeys(map(base_of, FAMILIES)))
    for family in FAMILIES:
        base = base_of(family)
        points = sorted(
            (r["model_calls"], r["quality_vs_ddpm"])
            for r in rows
            if r["label"].partition(":")[0] == family and r["quality_vs_ddpm"] is not None
        )
        if points:
            # one colour per sampler; its non-default spacings dashed (karras) or dotted
            ls = {"_karras": "--", "_trailing": ":"}.get(family.removeprefix(base), "-")
            style = {"ls": ls, "color": f"C{bases.index(base)}"}
            ax.plot(*zip(*points, strict=True), marker="o", label=family, **style)
    ax.axhline(1.0, color="k", lw=1, label="DDPM, 1000 calls")
    ax.axhline(0.95, color="k", lw=1, ls=":", label="0.95 of DDPM")
    ax.set_xscale("log")
    ax.set_xticks(CALLS, [str(c) for c in CALLS])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("model calls per image")
    ax.set_ylabel("confident share / DDPM-1000's")
    ax.set_title("Sample quality vs model calls (digits, default run)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def judge() -> tuple[SVC, np.ndarray]:
    """The SVM of digits_quality.py, trained on 70% of the real digits, and held-out digits."""
    digits = load_digits()
    x_train, x_test, y_train, _ = train_test_split(
        digits.data, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    return SVC(probability=True, random_state=0).fit(x_train, y_train), x_test


def to_digits_scale(samples: torch.Tensor) -> np.ndarray:
    """`[N, 1, 8, 8]` in [-1, 1] -> `[N, 64]` on the dataset's 0..16 scale."""
    return ((samples[:, 0].reshape(len(samples), -1).numpy() + 1) / 2 * 16).clip(0, 16)


def markdown(rows: list[dict], real: dict, ckpt: str, num: int) -> str:
    lines = [
        f"Checkpoint `{ckpt}`, {num} images per sampler, seed 0; judge: SVM on real digits.",
        "",
        "| sampler | model calls | wall s | confident | vs DDPM | mean top prob | classes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        vs = "-" if r["quality_vs_ddpm"] is None else f"{r['quality_vs_ddpm']:.2f}"
        lines.append(
            f"| {r['label']} | {r['model_calls']} | {r['wall_s']:.1f} | "
            f"{r['confident_share']:.3f} | {vs} | {r['mean_top_prob']:.3f} | "
            f"{r['classes_present']} |"
        )
    lines.append(
        f"| real digits (held out) | - | - | {real['confident_share']:.3f} | - | "
        f"{real['mean_top_prob']:.3f} | {real['classes_present']} |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt_path")
    parser.add_argument("--num", type=int, default=600, help="images per sampler")
    parser.add_argument("--batch-size", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS, help="name[:calls]")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--json", type=Path, default=None, help="rows, reused when rerun")
    parser.add_argument("--plot", type=Path, default=None, help="score vs calls (png)")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = load_model(args.ckpt_path, "cpu")
    clf, real = judge()
    key = {"ckpt": args.ckpt_path, "num": args.num, "seed": args.seed}
    done = {}
    if args.json and args.json.exists():
        saved = json.loads(args.json.read_text())
        if saved["key"] == key:
            done = {r["label"]: r for r in saved["rows"]}
    rows = []
    for spec in args.samplers:
        if spec in done:
            rows.append(done[spec])
            continue
        sampler = parse_sampler(spec)
        start = time.perf_counter()
        samples = model.sample_images(args.num, sampler, seed=args.seed, batch_size=args.batch_size)
        wall = time.perf_counter() - start
        fake = to_digits_scale(samples)
        rows.append(
            {
                "label": spec,
                "model_calls": sampler.num_model_calls(model.diffusion.num_timesteps),
                "wall_s": wall,
                **summarize(clf.predict_proba(fake), fake),
            }
        )
        rows[-1]["settings"] = sampler.settings()
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            everything = {**done, **{r["label"]: r for r in rows}}
            args.json.write_text(json.dumps({"key": key, "rows": list(everything.values())}))
    ddpm = next((r for r in rows if r["label"] == "ddpm"), None)
    for r in rows:
        base = ddpm["confident_share"] if ddpm else 0.0
        r["quality_vs_ddpm"] = r["confident_share"] / base if base > 0 else None
    real_summary = summarize(clf.predict_proba(real[: args.num]), real[: args.num])
    table = markdown(rows, real_summary, args.ckpt_path, args.num)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
