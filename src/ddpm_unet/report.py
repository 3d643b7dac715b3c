"""Sweep report: one row per multirun job, as CSV, Markdown and a comparison plot.

    python -m ddpm_unet.report logs/train/multiruns/<timestamp>

Reads each job folder's `.hydra/overrides.yaml`, `status.json` (written by every job, failed ones
included) and, when the CSV logger was on, `csv/version_*/metrics.csv` for the best values over
the whole run. Writes `report.csv`, `report.md` and `report.png` into the multirun folder.
Jobs that did not complete (failed, or no status.json) are marked: **bold** status and their
shortened error in the Markdown table, red in the plot; their missing values stay empty, never 0.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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


def short_error(error: str, limit: int = 60) -> str:
    """The first line of an error message, cut to `limit` characters (for tables and plots)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def _cell(value: str) -> str:
    """A Markdown table cell: `|` would end the cell, so it is escaped."""
    return value.replace("|", "\\|")


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (no extra dependency such as tabulate).

    Jobs that did not complete are marked **bold** in `status` with their shortened error in the
    last column; values they never reached are `-`, not blank and never 0.
    """
    shown = frame.copy()
    for col in ("img_per_s", "best_val_loss", "best_val_fid", "wall_s"):
        shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else f"{v:.4g}")
    for col in ("params", "global_step"):
        shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else f"{int(v):,}")
    done = shown.status == "completed"
    shown["status"] = [s if ok else f"**{s}**" for s, ok in zip(shown.status, done)]
    shown["error"] = [
        "" if ok else short_error(e) or "no status.json" for e, ok in zip(frame.error, done)
    ]
    lines = []
    if frame.attrs.get("common_overrides"):
        lines += [f"Overrides shared by all jobs: `{frame.attrs['common_overrides']}`", ""]
    lines += [f"{int(done.sum())} of {len(frame)} jobs completed.", ""]
    lines += ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    lines += [
        "| " + " | ".join(_cell(str(v)) for v in row) + " |" for row in shown.itertuples(False)
    ]
    failed = frame[~done]
    if len(failed):
        lines += ["", "Jobs that did not complete:"]
        lines += [
            f"- job {r.job} ({r.status}): {short_error(r.error, 300) or 'no status.json'}"
            for r in failed.itertuples()
        ]
    return "\n".join(lines) + "\n"


def axis_limits(values: pd.Series | list[float]) -> tuple[float, float]:
    """The x-range of one bar chart, scaled to the data so that small differences show.

    Starting at 0 makes 0.55 and 0.61 look equal; the range instead starts half the spread below
    the smallest value (never below 0 when all values are >= 0) and leaves a third of the spread
    above the largest for its value label. Without any finite value: (0, 1).
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    spread = high - low or (abs(high) * 0.1 or 1.0)  # one value (or all equal): 10% of it
    start = low - 0.5 * spread
    if low >= 0 > start:
        start = 0.0
    return start, high + spread / 3


FAILED_COLOR, COMPLETED_COLOR = "tab:red", "tab:blue"


def make_figure(frame: pd.DataFrame) -> Figure:
    """Bar charts per job of best val/loss (and val/fid when computed) and throughput.

    Each chart's x-axis is scaled to its values (`axis_limits`) and every bar carries its value.
    Jobs that did not complete are red: their tick label, any bar they have, and, where they
    have no value, their status (with the shortened error in the first chart).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    metrics = [
        ("best_val_loss", "best val/loss (lower is better)"),
        ("img_per_s", "train img/s (higher is better)"),
    ]
    if frame["best_val_fid"].notna().any():
        metrics.insert(1, ("best_val_fid", "best val/fid (lower is better)"))
    done = (frame.status == "completed").tolist()
    labels = [f"{r.job}: {r.overrides or '(base)'}" for r in frame.itertuples()]
    rows = list(range(len(frame)))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5 * len(metrics), 1.2 + 0.5 * len(frame)), dpi=100
    )
    for i, (ax, (col, title)) in enumerate(zip(axes, metrics)):
        start, end = axis_limits(frame[col])
        for row, value, ok, status, error in zip(rows, frame[col], done, frame.status, frame.error):
            color = COMPLETED_COLOR if ok else FAILED_COLOR
            if pd.notna(value):
                # Bars start at the axis' left edge, which is not 0 (see axis_limits).
                ax.barh(row, value - start, left=start, color=color)
                ax.text(value, row, f" {value:.4g}", va="center", ha="left", fontsize=8)
            elif not ok:
                reason = short_error(error, 40) or "no status.json"
                note = status if i else f"{status}: {reason}"
                ax.text(start, row, f" {note}", va="center", ha="left", color=FAILED_COLOR)
            else:
                ax.text(start, row, " n/a", va="center", ha="left", color="grey")
        ax.set_xlim(start, end)
        ax.set_ylim(len(frame) - 0.5, -0.5)  # job 0 on top
        ax.set_yticks(rows, labels if i == 0 else [""] * len(rows))
        ax.set_title(title)
    for tick, ok in zip(axes[0].get_yticklabels(), done):
        if not ok:
            tick.set_color(FAILED_COLOR)
    fig.tight_layout(pad=0.5)
    return fig


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Write `make_figure(frame)` to `path` (PNG)."""
    import matplotlib.pyplot as plt

    fig = make_figure(frame)
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
