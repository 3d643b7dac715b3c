"""`python {train,sample,eval}.py --help` show each script's own groups and options.

The help texts are templates in `configs/hydra/help/`. Hydra's `$APP_CONFIG_GROUPS` would list
every folder of `configs/` (training-only groups in `sample.py --help`), so the groups are written
out by hand; these tests make that list follow the configs: a group, an option file or a key
added without its help line fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
# Groups that only training composes: sample.py and eval.py must not offer them.
TRAINING_ONLY = ("hparams_search", "debug", "experiment", "callbacks", "model", "data")
# One override per script, to check that "Current values" reflects the command line.
HELP_OVERRIDES = {
    "sample": ["sampler=ddim"],
    "eval": ["sampler=ddim"],
    "train": ["model=unet_seed"],
}


@pytest.fixture(scope="module")
def help_text() -> dict[str, str]:
    """What `python <script>.py <override> --help` prints, for each script (run once each, the
    three side by side: most of each is Python's start-up)."""
    procs = {
        script: subprocess.Popen(
            [sys.executable, f"{script}.py", *overrides, "--help"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, overrides in HELP_OVERRIDES.items()
    }
    texts = {}
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        texts[script] = out
    return texts


def _section(text: str, title: str) -> list[str]:
    """The non-empty lines under `== <title> ... ==`, up to the next `==` heading."""
    match = re.search(rf"^== {re.escape(title)}[^\n]*==\n(.*?)(?=^== |\Z)", text, re.M | re.S)
    assert match, f"no '== {title}' section in:\n{text}"
    return [line for line in match.group(1).splitlines() if line.strip()]


def _groups(text: str) -> dict[str, list[str]]:
    """`group: a, b, c   description` lines -> {group: [a, b, c]}."""
    groups = {}
    for line in _section(text, "Config groups"):
        match = re.match(r"([\w/]+): (\w+(?:, \w+)*)", line)
        if match:
            groups[match.group(1)] = match.group(2).split(", ")
    return groups


def _options(text: str) -> set[str]:
    """The first word of every line of the Options section: the keys it documents."""
    return {line.split()[0] for line in _section(text, "Options")}


def _current_values(text: str) -> dict:
    """The composed config Hydra prints under "Current values", as data."""
    body = text.split("== Current values", 1)[1].split("\n", 1)[1]
    # The footer follows the YAML; it starts at the first blank line after the config.
    return yaml.safe_load(body.split("\n\n", 1)[0])


def _option_files(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _check_keys_documented(script: str, text: str) -> None:
    """Every key of the composed config is an option line, or sits under a listed group."""
    groups = _groups(text)
    options = _options(text)
    missing = []
    for key, value in _current_values(text).items():
        if isinstance(value, dict) and key not in groups:
            missing += [f"{key}.{sub}" for sub in value if f"{key}.{sub}" not in options]
        elif not isinstance(value, dict) and key not in options:
            missing.append(key)
    assert not missing, (
        f"configs/hydra/help/{script}.yaml does not describe {missing}: add one line each"
    )


@pytest.mark.parametrize("script", ["sample", "eval"])
def test_help_lists_only_the_scripts_groups(script: str, help_text: dict[str, str]) -> None:
    text = help_text[script]
    groups = _groups(text)
    expected = {
        "sample": {"sampler", "trainer", "paths"},
        "eval": {"sampler", "trainer", "logger", "paths"},
    }[script]
    assert set(groups) == expected
    for group, listed in groups.items():
        assert sorted(listed) == _option_files(group), f"{group} options in {script} --help"
    for name in TRAINING_ONLY:
        # As a group line (`debug: ...`) or a suggested override (`debug=...`) anywhere.
        offered = re.search(rf"(^|\s){name}[:=]", text, re.M)
        assert not offered, f"{script}.py --help offers the training group {name!r}"


def test_sample_help_names_its_options(help_text: dict[str, str]) -> None:
    text = help_text["sample"]
    assert text.startswith("sample.py: generate images")
    options = _options(text)
    assert {"ckpt_path", "num_samples", "seed", "use_ema", "sampler.steps"} <= options
    # The override given on the command line shows in the values.
    assert _current_values(text)["sampler"] == {
        "_target_": "ddpm_unet.models.samplers.ddim.DDIM",
        "steps": 50,
        "eta": 0.0,
        "spacing": "linspace",
    }
    _check_keys_documented("sample", text)


def test_eval_help_names_its_options(help_text: dict[str, str]) -> None:
    text = help_text["eval"]
    assert text.startswith("eval.py: FID, KID and Inception Score")
    options = _options(text)
    assert {"ckpt_path", "num_samples", "reference_split", "metrics.fid", "metrics.prc"} <= options
    assert _current_values(text)["sampler"]["_target_"].endswith(".DDIM")
    _check_keys_documented("eval", text)


def test_train_help_lists_every_group_and_option(help_text: dict[str, str]) -> None:
    text = help_text["train"]
    assert text.startswith("train.py: train a DDPM U-Net")
    groups = _groups(text)
    app_groups = {
        p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "sampler")
    }
    assert set(groups) == app_groups | {"hydra/launcher", "hydra/sweeper"}
    for group in app_groups:
        # debug/default.yaml is the base the debug presets extend, not a preset itself.
        files = [f for f in _option_files(group) if not (group == "debug" and f == "default")]
        assert sorted(groups[group]) == files, f"{group} options in train --help"
    assert set(_option_files("hydra/launcher")) <= set(groups["hydra/launcher"])
    assert set(_option_files("hydra/sweeper")) <= set(groups["hydra/sweeper"])
    assert {"seed", "ckpt_path", "optimized_metric", "attn_placement"} <= _options(text)
    assert _current_values(text)["model"]["net"]["ch_mults"] == [1, 2, 4, 16]
    _check_keys_documented("train", text)
