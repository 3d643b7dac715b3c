"""Are the samples of a digits checkpoint recognisable digits? A classifier trained on real digits.

    python benchmarks/digits_quality.py logs/train/runs/<ts>/checkpoints/last.ckpt [--num 500]

Trains an SVM (probability outputs) on scikit-learn's real 8x8 digits, then reports on N samples
drawn from the checkpoint's EMA weights and, side by side, on N held-out real digits:
* confident: share of images whose top class probability is >= 0.9
* mean top probability, and how many images each class gets (all ten should appear)
* sharpness: share of pixels near black or white (real digits are mostly background or ink)
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from ddpm_unet.models.samplers import DDIM, DDPM, DPMSolver, Sampler
from ddpm_unet.sample import load_model


def summarize(probs: np.ndarray, images: np.ndarray) -> dict[str, object]:
    """`probs`: `[N, 10]`; `images`: `[N, 64]` in 0..16."""
    top = probs.max(axis=1)
    counts = np.bincount(probs.argmax(axis=1), minlength=10)
    extreme = ((images <= 2) | (images >= 14)).mean()
    return {
        "confident_share": float((top >= 0.9).mean()),
        "mean_top_prob": float(top.mean()),
        "classes_present": int((counts > 0).sum()),
        "class_counts": counts.tolist(),
        "near_black_or_white_pixels": float(extreme),
    }


class FrechetJudge:
    """Frechet distance of samples to real digits in a digits classifier's features, and its floor.

    The 1797 real digits are shuffled once (seed 0) into two disjoint reference sets `A` and `B`
    of `n_ref` images each and a rest on which an MLP classifier (one hidden layer of 64 ReLU
    units) is trained. Features are its hidden activations (`[N, 64]`).
    * `floor`: FD(A, B), what two real sets of this size score: no model does better on average;
    * `score(samples)`: FD(samples[:n_ref], B), and `ratio` = score / floor (1 = as real digits);
    * class shares of the samples by the classifier's prediction (all ten digits should appear).
    """

    def __init__(self, n_ref: int = 500, seed: int = 0) -> None:
        from sklearn.neural_network import MLPClassifier

        digits = load_digits()
        x = digits.data.astype(np.float64) / 16.0  # [1797, 64] in [0, 1]
        order = np.random.default_rng(seed).permutation(len(x))
        if 2 * n_ref >= len(x) - 200:
            raise ValueError(f"n_ref={n_ref} leaves too few digits to train the judge; use <= 750.")
        a, b, rest = order[:n_ref], order[n_ref : 2 * n_ref], order[2 * n_ref :]
        self.n_ref = n_ref
        self.clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=3000, random_state=seed)
        self.clf.fit(x[rest], digits.target[rest])
        self.ref_b = self.features(x[b])
        self.floor = frechet_distance(self.features(x[a]), self.ref_b)

    def features(self, images: np.ndarray) -> np.ndarray:
        """`images` `[N, 64]` in [0, 1] -> hidden-layer activations `[N, 64]`."""
        return np.maximum(images @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)

    def score(self, images: np.ndarray) -> dict[str, object]:
        """`images` `[N >= n_ref, 64]` in [0, 1] -> FD, its ratio to the floor and class shares."""
        if len(images) < self.n_ref:
            raise ValueError(f"{len(images)} samples; the judge compares {self.n_ref}.")
        fd = frechet_distance(self.features(images[: self.n_ref]), self.ref_b)
        shares = np.bincount(self.clf.predict(images), minlength=10) / len(images)
        return {
            "fd": fd,
            "floor": self.floor,
            "ratio": fd / self.floor,
            "min_class_share": float(shares.min()),
            "class_shares": [round(float(v), 3) for v in shares],
        }


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to features `[N1, D]` and `[N2, D]` (as FID)."""
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    # A small ridge, as pytorch-fid does when the product is singular: ReLU units that are dead
    # on every image have zero variance.
    ridge = 1e-6 * np.eye(f1.shape[1])
    s1, s2 = np.cov(f1, rowvar=False) + ridge, np.cov(f2, rowvar=False) + ridge
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def make_sampler(name: str, steps: int | None, eta: float) -> Sampler:
    """`--sampler`, `--steps`, `--eta` -> a sampler (each sampler's own default steps if None)."""
    if name == "ddpm":
        return DDPM()
    if name == "ddim":
        return DDIM(eta=eta) if steps is None else DDIM(steps=steps, eta=eta)
    return DPMSolver() if steps is None else DPMSolver(steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt_path")
    parser.add_argument("--num", type=int, default=500, help="samples (and real digits) to judge")
    parser.add_argument("--sampler", default="ddpm", choices=["ddpm", "ddim", "dpm_solver"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="sample the raw weights, not the EMA")
    args = parser.parse_args()

    digits = load_digits()
    x_train, x_test, y_train, _ = train_test_split(
        digits.data, digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    clf = SVC(probability=True, random_state=0).fit(x_train, y_train)

    model = load_model(args.ckpt_path, "cpu")  # as sample.py reads it (weights_only=True)
    torch.set_grad_enabled(False)
    samples = model.sample_images(
        args.num,
        make_sampler(args.sampler, args.steps, args.eta),
        seed=args.seed,
        batch_size=250,
        use_ema=not args.raw,
        progress=True,
    )
    # [-1, 1] -> the dataset's 0..16 scale, [N, 64]
    fake = ((samples[:, 0].reshape(len(samples), -1).numpy() + 1) / 2 * 16).clip(0, 16)
    real = x_test[: args.num]
    report = {
        "checkpoint": args.ckpt_path,
        "num": args.num,
        "samples": summarize(clf.predict_proba(fake), fake),
        "real_held_out": summarize(clf.predict_proba(real), real),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
