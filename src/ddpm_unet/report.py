"""Sweep report: the jobs of a multirun ranked by sample quality, with their last sample grids.

    python -m ddpm_unet.report logs/train/multiruns/<timestamp>

Reads each job folder's `.hydra/overrides.yaml`, `status.json` (written by every job, failed ones
included), `samples/` (the sample grids) and, when the CSV logger was on,
`csv/version_*/metrics.csv` for the best values over the whole run. Writes into the multirun
folder:

- `report.csv`: one row per job, best first;
- `report.md` and `report.html`: the same table with each job's last sample grid beside its row
  (linked by relative paths, so the folder can be moved or copied whole), then `report.png`;
- `report.png`: bar charts of the ranking metric, the other metrics and the throughput.

Jobs are ranked by sample quality, the best `val/fid`, when any job measured it
(`callbacks=fid`); else by the best `val/loss_ema` (the EMA weights, which the grids and
checkpoints use), else by the best `val/loss`. The report says which. Jobs that did not complete
(failed, or no status.json) come last, unranked: **bold** status and their shortened error in the
Markdown table, red in the plot; their missing values stay empty, never 0.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = [
    "rank",
    "job",
    "overrides",
    "status",
    "params",
    "img_per_s",
    "best_val_fid",
    "best_val_loss_ema",
    "best_val_loss",
    "global_step",
    "wall_s",
    "start",
    "end",
    "grid",
    "error",
]
# Ranking metrics, best first: (metric name, report column). Lower is better for all three.
RANKING = [
    ("val/fid", "best_val_fid"),
    ("val/loss_ema", "best_val_loss_ema"),
    ("val/loss", "best_val_loss"),
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


def last_grid(job_dir: Path) -> Path | None:
    """The job's last sample grid: `samples/final.png`, else the newest `samples/*.png`."""
    final = job_dir / "samples" / "final.png"
    if final.is_file():
        return final
    grids = sorted(job_dir.glob("samples/*.png"), key=lambda p: (p.stat().st_mtime, p.name))
    return grids[-1] if grids else None


def job_row(job_dir: Path) -> dict[str, Any]:
    """Everything the report says about one job folder (`grid`: relative to the multirun)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    status_file = job_dir / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    metrics = status.get("metrics", {})
    frame = _csv_metrics(job_dir)
    throughput = metrics.get("train/img_per_s", math.nan)
    if frame is not None and "train/img_per_s" in frame and frame["train/img_per_s"].notna().any():
        throughput = float(frame["train/img_per_s"].dropna().mean())
    best = {
        column: _best(frame, name, metrics.get(f"best/{name}", metrics.get(name, math.nan)))
        for name, column in RANKING
    }
    grid = last_grid(job_dir)
    return {
        "rank": math.nan,  # filled in by `rank_jobs`
        "job": job_dir.name,
        "overrides": " ".join(overrides),
        # no status.json: the job was killed (timeout, pre-emption) or is still running
        "status": status.get("status", "unfinished"),
        "params": metrics.get("params", math.nan),
        "img_per_s": throughput,
        **best,
        "global_step": metrics.get("global_step", math.nan),
        "wall_s": status.get("wall_s", math.nan),
        "start": status.get("start", math.nan),
        "end": status.get("end", math.nan),
        "grid": grid.relative_to(job_dir.parent).as_posix() if grid is not None else "",
        "error": status.get("error", ""),
    }


def ranking_metric(frame: pd.DataFrame) -> tuple[str, str]:
    """(metric, column) the jobs are ranked by: the first of `RANKING` that a completed job has."""
    done = frame[frame.status == "completed"]
    for name, column in RANKING:
        if done[column].notna().any():
            return name, column
    return RANKING[-1]


def rank_jobs(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` sorted best first by `ranking_metric`, with `rank` 1, 2, ... for the completed
    jobs that have it; the others follow unranked, completed before not completed, by job."""
    name, column = ranking_metric(frame)
    ranked = (frame.status == "completed") & frame[column].notna()
    order = frame.assign(
        _group=[0 if r else 1 if s == "completed" else 2 for r, s in zip(ranked, frame.status)],
        _value=frame[column].where(ranked),
        _order=range(len(frame)),
    ).sort_values(["_group", "_value", "_order"], na_position="last")
    result = frame.loc[order.index].reset_index(drop=True)
    result["rank"] = [i + 1 if r else math.nan for i, r in enumerate(ranked.loc[order.index])]
    result.attrs = dict(frame.attrs, ranking_metric=name, ranking_column=column)
    return result


def collect(multirun_dir: Path) -> pd.DataFrame:
    """One row per job folder (a folder holding `.hydra/`), ranked (see `rank_jobs`)."""
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
    return rank_jobs(frame)


def short_error(error: str, limit: int = 60) -> str:
    """The first line of an error message, cut to `limit` characters (for tables and plots)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def _cell(value: str) -> str:
    """A Markdown table cell: `|` would end the cell, so it is escaped."""
    return value.replace("|", "\\|")


# Report columns in display order: (column, heading). The FID column only when measured.
SHOWN = [
    ("rank", "rank"),
    ("job", "job"),
    ("grid", "samples"),
    ("overrides", "overrides"),
    ("status", "status"),
    ("params", "params"),
    ("img_per_s", "img/s"),
    ("best_val_fid", "best val/fid"),
    ("best_val_loss_ema", "best val/loss_ema"),
    ("best_val_loss", "best val/loss"),
    ("global_step", "steps"),
    ("wall_s", "wall s"),
    ("error", "error"),
]


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as text: numbers formatted, missing values `-`, failed jobs' errors cut."""
    cols = [(c, h) for c, h in SHOWN if c != "best_val_fid" or frame[c].notna().any()]
    shown = frame[[c for c, _ in cols]].copy()
    for col in ("img_per_s", "best_val_fid", "best_val_loss_ema", "best_val_loss", "wall_s"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else f"{v:.4g}")
    for col in ("rank", "params", "global_step"):
        shown[col] = shown[col].map(lambda v: "-" if pd.isna(v) else f"{int(v):,}")
    done = frame.status == "completed"
    shown["error"] = [
        "" if ok else short_error(e) or "no status.json" for e, ok in zip(frame.error, done)
    ]
    return shown.rename(columns=dict(cols))


def _summary(frame: pd.DataFrame) -> list[str]:
    """The lines above the table: what ranks the jobs, how many completed, shared overrides."""
    name, column = frame.attrs["ranking_metric"], frame.attrs["ranking_column"]
    done = frame.status == "completed"
    measured = int((done & frame[column].notna()).sum())
    lines = [
        f"Ranked by best `{name}` (lower is better; measured by {measured} of {len(frame)} jobs)."
    ]
    if name != "val/fid":
        lines.append(
            "No job measured `val/fid`: run the sweep with `callbacks=fid` to rank by sample "
            "quality."
        )
    lines.append(f"{int(done.sum())} of {len(frame)} jobs completed.")
    if frame.attrs.get("common_overrides"):
        lines.append(f"Overrides shared by all jobs: `{frame.attrs['common_overrides']}`")
    return lines


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table, best job first, each row with its last sample grid.

    Jobs that did not complete are marked **bold** in `status` with their shortened error in the
    last column; values they never reached are `-`, not blank and never 0.
    """
    shown = _shown(frame)
    shown["samples"] = [f"![job {j}]({g})" if g else "-" for j, g in zip(frame.job, frame.grid)]
    done = frame.status == "completed"
    shown["status"] = [s if ok else f"**{s}**" for s, ok in zip(frame.status, done)]
    lines = ["# Sweep report", ""]
    lines += [line for s in _summary(frame) for line in (s, "")]
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
    lines += ["", "![metrics per job](report.png)"]
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    """Markdown's `code` spans as HTML <code> (the summary lines use them), escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html(frame: pd.DataFrame, title: str) -> str:
    """A standalone HTML page: the ranked table with each job's grid, then `report.png`."""
    shown = _shown(frame)
    done = frame.status == "completed"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    rows = []
    for (_, row), grid, ok in zip(shown.iterrows(), frame.grid, done):
        cells = []
        for col, value in row.items():
            if col == "samples":
                value = (
                    f'<img src="{html.escape(grid)}" alt="samples of job {html.escape(row.job)}" '
                    'class="grid">'
                    if grid
                    else "-"
                )
            elif col == "status" and not ok:
                value = f"<b>{html.escape(str(value))}</b>"
            else:
                value = html.escape(str(value))
            cells.append(f"<td>{value}</td>")
        rows.append(f'<tr class="{"" if ok else "failed"}">' + "".join(cells) + "</tr>")
    summary = "".join(f"<p>{_code(line)}</p>" for line in _summary(frame))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: middle; }}
tr.failed td {{ color: #d62728; }}
img.grid {{ height: 96px; image-rendering: pixelated; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{summary}
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<p><img src="report.png" alt="metrics per job"></p>
</body></html>
"""


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
    """Bar charts per job, best job on top: the ranking metric first, then the other measured
    losses and the throughput.

    Each chart's x-axis is scaled to its values (`axis_limits`) and every bar carries its value.
    Jobs that did not complete are red: their tick label, any bar they have, and, where they
    have no value, their status (with the shortened error in the first chart).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    first = frame.attrs.get("ranking_column", "best_val_loss")
    metrics = [
        (first, f"best {frame.attrs.get('ranking_metric', 'val/loss')} (ranks; lower is better)")
    ]
    for name, column in RANKING:
        if column != first and frame[column].notna().any():
            metrics.append((column, f"best {name} (lower is better)"))
    metrics.append(("img_per_s", "train img/s (higher is better)"))
    done = (frame.status == "completed").tolist()
    labels = [
        f"{'#' + str(int(r.rank)) if pd.notna(r.rank) else '-'} job {r.job}: "
        f"{r.overrides or '(base)'}"
        for r in frame.itertuples()
    ]
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
        ax.set_ylim(len(frame) - 0.5, -0.5)  # the best job on top
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
    """Write `report.csv`, `report.md`, `report.html`, `report.png` into `multirun_dir`; return
    the ranked table."""
    multirun_dir = Path(multirun_dir)
    frame = collect(multirun_dir)
    frame.to_csv(multirun_dir / "report.csv", index=False)
    (multirun_dir / "report.md").write_text(_markdown(frame))
    (multirun_dir / "report.html").write_text(_html(frame, f"Sweep {multirun_dir.name}"))
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
    print(
        f"wrote report.csv, report.md, report.html, report.png in {args.multirun_dir} "
        f"({len(frame)} jobs, ranked by {frame.attrs['ranking_metric']})"
    )


if __name__ == "__main__":
    main()
