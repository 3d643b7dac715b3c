"""The sweep report on a hand-built multirun folder: 2 completed jobs and 1 failed one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from ddpm_unet.report import axis_limits, make_figure, short_error, write_report
from tests.conftest import ROOT

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


def _job(sweep: Path, num: int, overrides: list[str], status: dict, csv: str | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "status.json").write_text(json.dumps(status, indent=2))
    if csv is not None:
        (job / "csv" / "version_0").mkdir(parents=True)
        (job / "csv" / "version_0" / "metrics.csv").write_text(csv)


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
    table = pd.read_csv(sweep / "report.csv")
    assert table.status.tolist() == ["completed", "completed", "failed"]
    assert table.overrides.tolist() == [f"model.net.n_groups={g}" for g in (8, 4, 5)]
    assert table.best_val_loss[:2].tolist() == pytest.approx(LOSSES)
    assert table.img_per_s[:2].tolist() == pytest.approx(SPEEDS)
    # the failed job has no values (not 0) and its whole error
    assert table.iloc[2][["best_val_loss", "img_per_s", "params"]].isna().all()
    assert table.error[2] == ERROR

    md = (sweep / "report.md").read_text()
    assert "Overrides shared by all jobs: `logger=csv`" in md
    assert "2 of 3 jobs completed." in md
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert " | 0.61 | " in rows["| 0"] and " | 240 | " in rows["| 0"]
    failed_row = rows["| 2"]
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
    result = subprocess.run(
        [sys.executable, "-m", "ddpm_unet.report", str(sweep)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| 2 | model.net.n_groups=5 | **failed** |" in result.stdout
    assert "job 2 (failed): UserError: model.net.n_groups=5" in result.stdout
    assert "(3 jobs)" in result.stdout


def test_a_folder_without_jobs_is_an_error_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ddpm_unet.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
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

    # one band per job, top to bottom: jobs 0, 1 (blue bars) and 2 (red, no bar)
    band = (y1 - y0) / 3
    bands = [chart[int(i * band) : int((i + 1) * band)] for i in range(3)]
    blue_width = [_is_color(b, BLUE).sum(1).max() for b in bands]
    red_in_band = [_is_color(b, RED).sum() for b in bands]
    assert blue_width[2] == 0 and red_in_band[0] == red_in_band[1] == 0
    assert red_in_band[2] > 50  # the red "failed: ..." note where the bar would be
    assert _is_color(labels[int(2 * band) :], RED).sum() > 20  # the failed job's label in red
    assert _is_color(labels[: int(2 * band)], RED).sum() == 0
    # data-scaled axis: 0.55 vs 0.61 from 0 would be bars of 90% each other's length
    assert blue_width[1] < 0.6 * blue_width[0], blue_width
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
