"""Sweep report: one row per multirun job, as CSV, Markdown and a comparison plot.

    python -m ddpm_unet.report logs/train/multiruns/<timestamp>

Reads each job folder's `.hydra/overrides.yaml`, `status.json` (written by every job, failed ones
included) and, when the CSV logger was on, `csv/version_*/metrics.csv` for the best values over
the whole run. Writes `report.csv`, `report.md` and `report.png` into the multirun folder.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

COLUMNS = [
    "job",
    "overrides",
    "status",
    "params",
    "img_per_s",
    "best_val_loss",
    "best_val_fid",
    "global_step",
    "wall_s",
    "error",
]


def _csv_metrics(job_dir: Path) -> pd.DataFrame | None:
    files = sorted(job_dir.glob("csv/version_*/metrics.csv"))
    if not files:
        return None
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def _best(frame: pd.DataFrame | None, column: str, fallback: Any) -> float:
    if frame is not None and column in frame and frame[column].notna().any():
        return float(frame[column].min())
    return float(fallback) if isinstance(fallback, int | float) else math.nan


def job_row(job_dir: Path) -> dict[str, Any]:
    """Everything the report says about one job folder."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    status_file = job_dir / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    metrics = status.get("metrics", {})
    frame = _csv_metrics(job_dir)
    throughput = metrics.get("train/img_per_s", math.nan)
    if frame is not None and "train/img_per_s" in frame and frame["train/img_per_s"].notna().any():
        throughput = float(frame["train/img_per_s"].dropna().mean())
    return {
        "job": job_dir.name,
        "overrides": " ".join(overrides),
        # no status.json: the job was killed (timeout, pre-emption) or is still running
        "status": status.get("status", "unfinished"),
        "params": metrics.get("params", math.nan),
        "img_per_s": throughput,
        "best_val_loss": _best(frame, "val/loss", metrics.get("best/val/loss", math.nan)),
        "best_val_fid": _best(frame, "val/fid", metrics.get("best/val/fid", math.nan)),
        "global_step": metrics.get("global_step", math.nan),
        "wall_s": status.get("wall_s", math.nan),
        "error": status.get("error", ""),
    }


def collect(multirun_dir: Path) -> pd.DataFrame:
    """One row per job folder (a folder holding `.hydra/`), sorted by job number."""
    jobs = [p for p in multirun_dir.iterdir() if (p / ".hydra").is_dir()]
    if not jobs:
        raise FileNotFoundError(
            f"no job folders (with .hydra/) under {multirun_dir}: pass a multirun folder such "
            "as logs/train/multiruns/<timestamp>."
        )
    jobs.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else p.name))
    frame = pd.DataFrame([job_row(p) for p in jobs], columns=COLUMNS)
    # Show what tells the jobs apart; overrides shared by every job go to the report's header.
    per_job = [set(o.split()) for o in frame.overrides]
    common = set.intersection(*per_job) if per_job else set()
    frame["overrides"] = [
        " ".join(o for o in row.split() if o not in common) for row in frame.overrides
    ]
    frame.attrs["common_overrides"] = " ".join(sorted(common))
    return frame


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (no extra dependency such as tabulate)."""
    shown = frame.drop(columns=["error"]).copy()
    for col in ("img_per_s", "best_val_loss", "best_val_fid", "wall_s"):
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    for col in ("params", "global_step"):
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
    lines = []
    if frame.attrs.get("common_overrides"):
        lines += [f"Overrides shared by all jobs: `{frame.attrs['common_overrides']}`", ""]
    lines += ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(False)]
    failed = frame[frame.status != "completed"]
    if len(failed):
        lines += ["", "Jobs that did not complete:"]
        lines += [
            f"- job {r.job} ({r.status}): {r.error or 'no status.json'}"
            for r in failed.itertuples()
        ]
    return "\n".join(lines) + "\n"


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Bar charts of best val/loss (and val/fid when computed) and throughput, per job."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    metrics = [("best_val_loss", "best val/loss (lower is better)"), ("img_per_s", "train img/s")]
    if frame["best_val_fid"].notna().any():
        metrics.insert(1, ("best_val_fid", "best val/fid (lower is better)"))
    labels = [f"{r.job}: {r.overrides or '(base)'}" for r in frame.itertuples()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 1.2 + 0.5 * len(frame)))
    colors = ["tab:blue" if s == "completed" else "tab:red" for s in frame.status]
    for ax, (col, title) in zip(axes, metrics):
        ax.barh(labels, frame[col].fillna(0), color=colors)
        ax.set_title(title)
        ax.invert_yaxis()
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.tight_layout(pad=0.5)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(multirun_dir: str | Path) -> pd.DataFrame:
    """Write `report.csv`, `report.md`, `report.png` into `multirun_dir`; return the table."""
    multirun_dir = Path(multirun_dir)
    frame = collect(multirun_dir)
    frame.to_csv(multirun_dir / "report.csv", index=False)
    (multirun_dir / "report.md").write_text(_markdown(frame))
    plot(frame, multirun_dir / "report.png")
    return frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", type=Path, help="e.g. logs/train/multiruns/<timestamp>")
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        parser.error(f"{args.multirun_dir} is not a folder: pass a multirun folder.")
    try:
        frame = write_report(args.multirun_dir)
    except FileNotFoundError as err:
        parser.error(str(err))
    print((args.multirun_dir / "report.md").read_text())
    print(f"wrote report.csv, report.md, report.png in {args.multirun_dir} ({len(frame)} jobs)")


if __name__ == "__main__":
    main()
