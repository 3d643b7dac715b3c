"""The sweep report on a hand-built multirun folder: 2 completed jobs and 1 failed one.

Job 1 has the lower val/loss (0.55 < 0.61), so it ranks first; the failed job 2 comes last.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from ddpm_unet.report import axis_limits, make_figure, short_error, write_report
from tests.conftest import run_report

ERROR = (
    "UserError: model.net.n_groups=5 does not divide n_channels=16: pick a divisor "
    "of every level's channels (e.g. 8)"
)
# (best val/loss, img/s) of the two completed jobs: close values, hard to tell apart from 0
LOSSES, SPEEDS = (0.61, 0.55), (240.0, 180.0)


def _metrics_csv(best_loss: float, speed: float) -> str:
    """A `csv/version_0/metrics.csv` as the CSV logger writes it (2 epochs, 1 step each)."""
    return (
        "epoch,lr,step,train/img_per_s,train/loss_epoch,train/loss_step,val/loss\n"
        "0,0.001,0,,,1.09,\n"
        f"0,,0,,,,{best_loss + 0.1}\n"
        f"0,,0,{speed},0.9,,\n"
        "1,0.002,1,,,0.64,\n"
        f"1,,1,,,,{best_loss}\n"
        f"1,,1,{speed},0.6,,\n"
    )


def grid_pixels(num: int) -> np.ndarray:
    """A 20x30 grey image that differs per job: a bright square whose position is the job."""
    pixels = np.full((20, 30), 10, dtype=np.uint8)
    pixels[5:15, 2 + 8 * num : 10 + 8 * num] = 250
    return pixels


def _job(sweep: Path, num: int, overrides: list[str], status: dict, csv: str | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "status.json").write_text(json.dumps(status, indent=2))
    if csv is not None:
        (job / "csv" / "version_0").mkdir(parents=True)
        (job / "csv" / "version_0" / "metrics.csv").write_text(csv)
        # as SampleGrid leaves them: a grid per validation, then final.png, the last one
        (job / "samples").mkdir()
        Image.fromarray(255 - grid_pixels(num)).save(
            job / "samples" / "epoch_0000_step_0000001.png"
        )
        Image.fromarray(grid_pixels(num)).save(job / "samples" / "final.png")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """The files `train.py -m model.net.n_groups=8,4,5 logger=csv` leaves, job 2 failed."""
    sweep = tmp_path / "multiruns" / "2026-11-25_10-00-00"
    for num, (loss, speed) in enumerate(zip(LOSSES, SPEEDS)):
        metrics = {"global_step": 2, "params": 150_241 + num, "best/val/loss": loss}
        _job(
            sweep,
            num,
            [f"model.net.n_groups={8 // (num + 1)}", "logger=csv"],
            {"status": "completed", "metrics": metrics, "wall_s": 12.5},
            _metrics_csv(loss, speed),
        )
    failed = {"status": "failed", "error": ERROR, "traceback": "Traceback ...", "wall_s": 1.5}
    _job(sweep, 2, ["model.net.n_groups=5", "logger=csv"], failed, None)
    return sweep


def test_tables_mark_the_failed_job_and_keep_its_values_empty(sweep: Path) -> None:
    write_report(sweep)
    table = pd.read_csv(sweep / "report.csv")  # best first: job 1 (0.55), job 0 (0.61), failed
    assert table.job.tolist() == [1, 0, 2] and table["rank"][:2].tolist() == [1, 2]
    assert pd.isna(table["rank"][2])  # a failed job is not ranked
    assert table.status.tolist() == ["completed", "completed", "failed"]
    assert table.overrides.tolist() == [f"model.net.n_groups={g}" for g in (4, 8, 5)]
    assert table.best_val_loss[:2].tolist() == pytest.approx(LOSSES[::-1])
    assert table.img_per_s[:2].tolist() == pytest.approx(SPEEDS[::-1])
    # the failed job has no values (not 0) and its whole error
    assert table.iloc[2][["best_val_loss", "img_per_s", "params"]].isna().all()
    assert table.error[2] == ERROR

    md = (sweep / "report.md").read_text()
    assert "Overrides shared by all jobs: `logger=csv`" in md
    assert "2 of 3 jobs completed." in md
    # no val/loss_ema or val/fid in these runs: ranked by val/loss, and the report says so
    assert "Ranked by best `val/loss` (lower is better; measured by 2 of 3 jobs)." in md
    assert "run the sweep with `callbacks=fid` to rank by sample quality" in md
    rows = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| ")}
    assert rows["0"].startswith("| 2 | 0 | ") and rows["1"].startswith("| 1 | 1 | ")
    assert " | 0.61 | " in rows["0"] and " | 240 | " in rows["0"]
    failed_row = rows["2"]
    assert " | **failed** | " in failed_row
    assert " | - | - | - |" in failed_row  # no values, marked rather than left blank
    assert short_error(ERROR) in failed_row and failed_row.endswith(" |")
    assert f"- job 2 (failed): {ERROR}" in md


def test_a_job_without_status_json_is_unfinished(sweep: Path) -> None:
    """A job killed before it could write status.json (timeout, pre-emption)."""
    (sweep / "1" / "status.json").unlink()
    table = write_report(sweep)
    assert table.status.tolist() == ["completed", "unfinished", "failed"]
    md = (sweep / "report.md").read_text()
    assert "1 of 3 jobs completed." in md
    assert "| **unfinished** |" in md and "- job 1 (unfinished): no status.json" in md


def test_command_prints_the_table(sweep: Path) -> None:
    result = run_report(sweep)
    assert result.returncode == 0, result.stderr
    assert "| - | 2 | - | model.net.n_groups=5 | **failed** |" in result.stdout
    assert "job 2 (failed): UserError: model.net.n_groups=5" in result.stdout
    assert "(3 jobs, ranked by val/loss)" in result.stdout


def test_a_folder_without_jobs_is_an_error_naming_it(tmp_path: Path) -> None:
    result = run_report(tmp_path)
    assert result.returncode != 0
    assert f"no job folders (with .hydra/) under {tmp_path}" in result.stderr


def test_short_error_keeps_the_first_line() -> None:
    assert short_error("ValueError: bad\nmore lines") == "ValueError: bad"
    cut = short_error("x" * 100, limit=20)
    assert cut == "x" * 17 + "..." and len(cut) == 20


def test_axis_limits_follow_the_data() -> None:
    start, end = axis_limits([0.61, 0.55, math.nan])
    assert 0.5 < start < 0.55 and 0.61 < end < 0.65  # not from 0
    assert axis_limits([0.02, 1.0])[0] == 0.0  # positive values: never below 0
    low, high = axis_limits([-3.0, -1.0])
    assert low < -3.0 and high > -1.0
    low, high = axis_limits([150.0])  # one value: a range around it
    assert low < 150.0 < high and low > 100.0
    assert axis_limits([math.nan]) == (0.0, 1.0)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def _is_color(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return (np.abs(pixels - np.array(rgb)) <= 12).all(axis=-1)


RED, BLUE = (214, 39, 40), (31, 119, 180)  # matplotlib's tab:red and tab:blue


def test_plot_shows_the_failed_job_in_red_and_scales_the_axes(sweep: Path) -> None:
    frame = write_report(sweep)
    pixels = _rgb(sweep / "report.png")
    # The figure the report saved, redrawn to find where each chart lies in the PNG.
    fig = make_figure(frame)
    fig.canvas.draw()
    width, height = fig.canvas.get_width_height()
    assert pixels.shape[:2] == (height, width)
    loss_ax = fig.axes[0]
    box = loss_ax.get_window_extent()
    x0, x1 = int(box.x0) + 2, int(box.x1) - 2
    y0, y1 = height - int(box.y1) + 2, height - int(box.y0) - 2  # PNG rows count from the top
    chart = pixels[y0:y1, x0:x1]
    labels = pixels[y0:y1, : int(box.x0)]  # the job labels left of the first chart

    # one band per job, best on top: jobs 1, 0 (blue bars) and 2 (red, no bar)
    band = (y1 - y0) / 3
    bands = [chart[int(i * band) : int((i + 1) * band)] for i in range(3)]
    blue_width = [_is_color(b, BLUE).sum(1).max() for b in bands]
    red_in_band = [_is_color(b, RED).sum() for b in bands]
    assert blue_width[2] == 0 and red_in_band[0] == red_in_band[1] == 0
    assert red_in_band[2] > 50  # the red "failed: ..." note where the bar would be
    assert _is_color(labels[int(2 * band) :], RED).sum() > 20  # the failed job's label in red
    assert _is_color(labels[: int(2 * band)], RED).sum() == 0
    # data-scaled axis: 0.55 vs 0.61 from 0 would be bars of 90% each other's length
    assert blue_width[0] < 0.6 * blue_width[1], blue_width
    start, end = loss_ax.get_xlim()
    assert (start, end) == pytest.approx(axis_limits(LOSSES))
    # value labels on the bars
    texts = {t.get_text().strip() for t in loss_ax.texts}
    assert {"0.61", "0.55"} <= texts and any(t.startswith("failed: UserError") for t in texts)


def test_plot_without_failures_has_no_red(sweep: Path) -> None:
    import shutil

    shutil.rmtree(sweep / "2")
    write_report(sweep)
    assert _is_color(_rgb(sweep / "report.png"), RED).sum() == 0
    assert _is_color(_rgb(sweep / "report.png"), BLUE).sum() > 500


def _status(sweep: Path, job: int) -> dict:
    return json.loads((sweep / str(job) / "status.json").read_text())


def _set_metrics(sweep: Path, job: int, **metrics: float) -> None:
    status = _status(sweep, job)
    status["metrics"].update({f"best/{k.replace('_', '/', 1)}": v for k, v in metrics.items()})
    (sweep / str(job) / "status.json").write_text(json.dumps(status))


def test_jobs_are_ranked_by_fid_when_measured_else_by_the_ema_loss(sweep: Path) -> None:
    """val/fid outranks val/loss_ema, which outranks val/loss, whatever the other values say."""
    _set_metrics(sweep, 0, val_loss_ema=0.70)
    _set_metrics(sweep, 1, val_loss_ema=0.50)  # job 1 better on both losses ...
    table = write_report(sweep)
    assert table.attrs["ranking_metric"] == "val/loss_ema" and table.job.tolist()[:2] == ["1", "0"]
    assert "Ranked by best `val/loss_ema`" in (sweep / "report.md").read_text()

    _set_metrics(sweep, 0, val_fid=12.5)
    _set_metrics(sweep, 1, val_fid=40.0)  # ... but job 0 draws better samples
    table = write_report(sweep)
    assert table.attrs["ranking_metric"] == "val/fid"
    assert table.job.tolist() == ["0", "1", "2"] and table["rank"][:2].tolist() == [1, 2]
    md = (sweep / "report.md").read_text()
    assert "Ranked by best `val/fid` (lower is better; measured by 2 of 3 jobs)." in md
    assert "callbacks=fid" not in md
    assert "| best val/fid | best val/loss_ema | best val/loss |" in md
    html = (sweep / "report.html").read_text()
    assert "Ranked by best <code>val/fid</code>" in html
    assert make_figure(table).axes[0].get_title().startswith("best val/fid (ranks")


def _grid_links(sweep: Path) -> dict[str, list[str]]:
    md = (sweep / "report.md").read_text()
    html = (sweep / "report.html").read_text()
    return {
        "md": re.findall(r"!\[job (\d+)\]\(([^)]+)\)", md),
        "html": re.findall(r'<img src="([^"]+)" alt="samples of job (\d+)"', html),
    }


def test_reports_show_each_jobs_last_grid_by_relative_path(sweep: Path) -> None:
    write_report(sweep)
    links = _grid_links(sweep)
    # best first, beside the job's row; the failed job left no grid
    assert links["md"] == [("1", "1/samples/final.png"), ("0", "0/samples/final.png")]
    assert [(j, p) for p, j in links["html"]] == links["md"]
    for job, path in links["md"]:
        assert not Path(path).is_absolute()
        with Image.open(sweep / path) as img:  # resolves from the report's folder
            np.testing.assert_array_equal(np.asarray(img), grid_pixels(int(job)))
    md_rows = [line for line in (sweep / "report.md").read_text().splitlines() if "![job" in line]
    assert md_rows[0].startswith("| 1 | 1 | ![job 1](1/samples/final.png) | model.net.n_groups=4 |")
    html = (sweep / "report.html").read_text()
    assert (
        '<img src="report.png"' in html
        and "![metrics per job](report.png)" in (sweep / "report.md").read_text()
    )

    # without final.png (a job stopped mid-run) the newest grid stands in
    (sweep / "0" / "samples" / "final.png").unlink()
    write_report(sweep)
    assert ("0", "0/samples/epoch_0000_step_0000001.png") in _grid_links(sweep)["md"]
