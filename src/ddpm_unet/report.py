"""Sweep report: the jobs of a multirun ranked by sample quality, with their last sample grids.

    python -m ddpm_unet.report logs/train/multiruns/<timestamp>

Reads each job folder's `.hydra/overrides.yaml`, `status.json` (written by every job, failed ones
included), `samples/` and, when the CSV logger was on, `csv/version_*/metrics.csv` (best values
over the whole run). Writes one table, best job first, as `report.csv`, `report.md` and
`report.html` (with each job's last sample grid, linked by a relative path so the folder can be
moved whole), and `report.png`, bar charts per metric. Jobs are ranked by the best `val/fid`
when any job measured it (`callbacks=fid`), else `val/loss_ema`, else `val/loss` (the report says
which). Jobs that did not complete come last, unranked, marked bold and red; values they never
reached are empty, never 0.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Ranking metrics, best first, as (metric name, report column); lower is better for all three.
# `val/fid` measures sample quality (`callbacks=fid`); `val/loss_ema` the EMA weights, which the
# grids and checkpoints use.
RANKING = [
    (name, "best_" + name.replace("/", "_")) for name in ("val/fid", "val/loss_ema", "val/loss")
]
# The columns the md/html tables show, in order (the FID column only when measured), and their
# headings where not the column's name.
SHOWN = ["rank", "job", "grid", "overrides", "status", "params", "img_per_s"]
SHOWN += [column for _, column in RANKING] + ["global_step", "wall_s", "error"]
HEADINGS = {"grid": "samples", "img_per_s": "img/s", "global_step": "steps", "wall_s": "wall s"}
HEADINGS.update({column: f"best {name}" for name, column in RANKING})
INTEGERS = ("rank", "params", "global_step")  # shown as 150,241; other numbers as 0.5512
FAILED_COLOR, COMPLETED_COLOR = "tab:red", "tab:blue"


def last_grid(job_dir: Path) -> Path | None:
    """The job's last sample grid: `samples/final.png`, else the newest `samples/*.png`."""
    final = job_dir / "samples" / "final.png"
    if final.is_file():
        return final
    grids = job_dir.glob("samples/*.png")
    return max(grids, key=lambda p: (p.stat().st_mtime, p.name), default=None)


def job_row(job_dir: Path) -> dict[str, Any]:
    """Everything the report says about one job folder (`grid`: relative to the multirun)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    status_file = job_dir / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    metrics = status.get("metrics", {})
    logs = sorted(job_dir.glob("csv/version_*/metrics.csv"))
    csv = pd.concat([pd.read_csv(f) for f in logs]) if logs else pd.DataFrame()

    def over_run(name: str, how: str, fallback: Any) -> float:  # "min"/"mean" over the CSV log
        values = csv[name].dropna() if name in csv else []
        if len(values):
            return float(values.agg(how))
        return float(fallback) if isinstance(fallback, int | float) else math.nan

    grid = last_grid(job_dir)
    return {
        "rank": math.nan,  # filled in by `rank_jobs`
        "job": job_dir.name,
        "overrides": " ".join(overrides),
        # no status.json: the job was killed (timeout, pre-emption) or is still running
        "status": status.get("status", "unfinished"),
        "params": metrics.get("params", math.nan),
        "img_per_s": over_run("train/img_per_s", "mean", metrics.get("train/img_per_s")),
        **{
            column: over_run(name, "min", metrics.get(f"best/{name}", metrics.get(name)))
            for name, column in RANKING
        },
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
    frame = pd.DataFrame([job_row(p) for p in jobs])
    # Show what tells the jobs apart; overrides shared by every job go to the report's header.
    common = set.intersection(*(set(o.split()) for o in frame.overrides))
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


def _table(
    frame: pd.DataFrame,
    escape: Callable[[str], str],
    image: Callable[[str, str], str],
    bold: Callable[[str], str],
) -> tuple[list[str], list[list[str]]]:
    """(headings, rows) of the md/html table, each cell rendered: text through `escape`, the grid
    through `image(path, job)` (`-` without one), a job that did not complete with its status
    `bold` and its shortened error, numbers formatted, missing values `-`."""
    columns = [c for c in SHOWN if c != "best_val_fid" or frame[c].notna().any()]
    rows = []
    for row in frame.to_dict("records"):
        ok = row["status"] == "completed"
        row["error"] = "" if ok else short_error(row["error"]) or "no status.json"
        cells = []
        for col in columns:
            value = row[col]
            if col == "grid":
                cells.append(image(escape(value), escape(row["job"])) if value else "-")
            elif col == "status" and not ok:
                cells.append(bold(escape(value)))
            elif isinstance(value, str):
                cells.append(escape(value))
            elif pd.isna(value):
                cells.append("-")
            else:
                cells.append(f"{int(value):,}" if col in INTEGERS else f"{value:.4g}")
        rows.append(cells)
    return [escape(HEADINGS.get(c, c)) for c in columns], rows


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
    """A GitHub Markdown table, best job first, each row with its last sample grid; then the
    whole errors of the jobs that did not complete, and `report.png`."""
    head, rows = _table(
        frame,
        lambda text: text.replace("|", "\\|"),  # a `|` would end the cell
        lambda grid, job: f"![job {job}]({grid})",
        lambda text: f"**{text}**",
    )
    lines = ["# Sweep report", ""]
    lines += [line for s in _summary(frame) for line in (s, "")]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    failed = frame[frame.status != "completed"]
    if len(failed):
        lines += ["", "Jobs that did not complete:"]
        lines += [
            f"- job {r.job} ({r.status}): {short_error(r.error, 300) or 'no status.json'}"
            for r in failed.itertuples()
        ]
    lines += ["", "![metrics per job](report.png)"]
    return "\n".join(lines) + "\n"


def _html(frame: pd.DataFrame, title: str) -> str:
    """A standalone HTML page: the ranked table with each job's grid, then `report.png`."""
    head, rows = _table(
        frame,
        html.escape,
        lambda grid, job: f'<img src="{grid}" alt="samples of job {job}" class="grid">',
        lambda text: f"<b>{text}</b>",
    )
    body = "\n".join(
        f'<tr class="{"" if ok else "failed"}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for cells, ok in zip(rows, frame.status == "completed")
    )
    # The summary's Markdown `code` spans (the odd parts between backticks) as <code>.
    parts = [html.escape(line).split("`") for line in _summary(frame)]
    summary = "".join(
        "<p>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(line)) + "</p>"
        for line in parts
    )
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
<table><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead><tbody>
{body}
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


def make_figure(frame: pd.DataFrame) -> Figure:
    """Bar charts per job, best job on top: the ranking metric, the other measured losses, the
    throughput; each x-axis scaled to its values (`axis_limits`), each bar labelled. Jobs that
    did not complete are red: their label, bars, and status (and error, in the first chart)."""
    # A bare Figure, not pyplot: no GUI backend, nothing global to close afterwards.
    from matplotlib.figure import Figure

    first = frame.attrs["ranking_column"]
    metrics = [(first, f"best {frame.attrs['ranking_metric']} (ranks; lower is better)")]
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
    rows = range(len(frame))
    fig = Figure(figsize=(5 * len(metrics), 1.2 + 0.5 * len(frame)), dpi=100)
    axes = fig.subplots(1, len(metrics), sharey=True)
    axes[0].set_ylim(len(frame) - 0.5, -0.5)  # the best job on top
    axes[0].set_yticks(rows, labels)
    for tick, ok in zip(axes[0].get_yticklabels(), done):
        if not ok:
            tick.set_color(FAILED_COLOR)
    for i, (ax, (col, title)) in enumerate(zip(axes, metrics)):
        start, end = axis_limits(frame[col])
        for row, value, ok, status, error in zip(rows, frame[col], done, frame.status, frame.error):
            color = COMPLETED_COLOR if ok else FAILED_COLOR
            if pd.notna(value):
                # Bars start at the axis' left edge, which is not 0 (see axis_limits).
                ax.barh(row, value - start, left=start, color=color)
                ax.text(value, row, f" {value:.4g}", va="center", ha="left", fontsize=8)
            else:
                reason = "" if i else f": {short_error(error, 40) or 'no status.json'}"
                note, color = (" n/a", "grey") if ok else (f" {status}{reason}", color)
                ax.text(start, row, note, va="center", ha="left", color=color)
        ax.set_xlim(start, end)
        ax.set_title(title)
    fig.tight_layout(pad=0.5)
    return fig


def write_report(multirun_dir: str | Path) -> pd.DataFrame:
    """Write `report.csv`, `report.md`, `report.html`, `report.png` into `multirun_dir`; return
    the ranked table."""
    multirun_dir = Path(multirun_dir)
    frame = collect(multirun_dir)
    frame.to_csv(multirun_dir / "report.csv", index=False)
    (multirun_dir / "report.md").write_text(_markdown(frame))
    (multirun_dir / "report.html").write_text(_html(frame, f"Sweep {multirun_dir.name}"))
    make_figure(frame).savefig(multirun_dir / "report.png", dpi=100)
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
