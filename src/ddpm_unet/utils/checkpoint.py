"""The one checkpoint reader of every command (train.py resume, sample.py, eval.py, W&B set-up).

A checkpoint given on the command line is a file from a user, so it is data, never code: it is
read with `torch.load(weights_only=True)`, which refuses any pickled object other than tensors
and plain containers, and nothing else in this project unpickles it. Every way a file can fail to
be a usable checkpoint becomes one `CheckpointError` (a `UserError`: the command prints it as one
line and exits with status 2) whose message names the file and says what it is not:

* missing, a folder, unreadable, empty (`CheckpointNotFoundError` for a missing file);
* not a checkpoint at all: random bytes, text, a plain pickle, a damaged or truncated archive;
* refused: a pickle that holds code or objects this project never writes (nothing of it runs);
* a checkpoint of another model: a bare state dict, another LightningModule's weights, no
  `hyper_parameters`/`run_config`; for resuming, no training state;
* an incompatible architecture: which weights are missing, unexpected or of another shape.

torch's own advice on such failures (to reload with `weights_only=False`, which would run
whatever the file holds) never reaches the user: messages are written here.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ddpm_unet.utils.errors import UserError

if TYPE_CHECKING:
    from ddpm_unet.models.lit_diffusion import LitDiffusion

WHERE_CHECKPOINTS_ARE = (
    "train.py writes them to logs/train/runs/<run>/checkpoints/ (last.ckpt, epoch_*.ckpt, "
    "best_fid_*.ckpt)"
)
MODEL_PREFIXES = ("net.", "ema.")
"""Every weight of `LitDiffusion` is in the U-Net (`net.*`) or its EMA copy (`ema.*`)."""
PROJECT_KEYS = ("state_dict", "hyper_parameters", "run_config")
"""What every checkpoint of this project's train.py holds besides Lightning's bookkeeping."""
RESUME_KEYS = ("optimizer_states", "lr_schedulers", "loops", "epoch", "global_step")
"""What Lightning needs to continue a run (absent from weights-only saves)."""
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives (since torch 1.6)
WEIGHTS_ONLY_REFUSAL = re.compile(
    r"GLOBAL|Unsupported|blocked|not an allowed"
)  # weights_only refusals
_MAX_LISTED = 4  # keys named per kind of mismatch; the message says how many there are


class CheckpointError(UserError):
    """A file given as a checkpoint that cannot be used; the message names it and says why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path is unset or names no file."""


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The dict saved in checkpoint `path`, read as data only (`weights_only=True`).

    Tensors are memory-mapped (`mmap=True`) and on the CPU, so reading a few metadata entries of
    a large checkpoint costs little. `key` is the config key the path came from, for messages.

    Raises:
        CheckpointNotFoundError: `path` does not exist.
        CheckpointError: it is not a file, is empty, is not a torch.save archive, holds objects
            other than tensors and plain data, or does not hold a dict.
    """
    file = Path(str(path)).expanduser()
    name = f"{key}={path}"
    if not file.exists():
        raise CheckpointNotFoundError(
            f"{name} does not exist: point it at a checkpoint; {WHERE_CHECKPOINTS_ARE}."
        )
    if file.is_dir():
        raise CheckpointError(
            f"{name} is a folder, not a checkpoint file: name the file itself, e.g. "
            f"{key}={file / 'checkpoints' / 'last.ckpt'}; {WHERE_CHECKPOINTS_ARE}."
        )
    try:
        with open(file, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        raise CheckpointError(f"{name} cannot be read: {err.strerror or err}.") from None
    if not head:
        raise CheckpointError(
            f"{name} is empty (0 bytes), not a checkpoint: an interrupted save leaves such "
            "files; use another checkpoint of the run (last.ckpt or epoch_*.ckpt)."
        )
    if not head.startswith(ZIP_MAGIC):
        # Not an archive torch.save writes: described from its bytes, never unpickled.
        raise CheckpointError(
            f"{name} is not a checkpoint: it is {describe_bytes(head)}, not the zip archive "
            f"that torch.save writes; {WHERE_CHECKPOINTS_ARE}."
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if WEIGHTS_ONLY_REFUSAL.search(str(err)):
            raise CheckpointError(_refused_message(name, str(err))) from None
        raise CheckpointError(
            f"{name} is not a checkpoint: a damaged archive (its pickle is unreadable); "
            f"{WHERE_CHECKPOINTS_ARE}."
        ) from None
    except Exception as err:  # noqa: BLE001 - a malformed archive can raise anything
        raise CheckpointError(
            f"{name} is not a checkpoint: {describe_archive_error(err, file)}; "
            f"{WHERE_CHECKPOINTS_ARE}."
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{name} holds a {type(checkpoint).__name__}, not the dict of a Lightning "
            f"checkpoint; {WHERE_CHECKPOINTS_ARE}."
        )
    return checkpoint


def read_lit_checkpoint(
    path: str | Path, key: str = "ckpt_path", resume: bool = False
) -> dict[str, Any]:
    """`read_checkpoint`, then raise `CheckpointError` unless it was written by this project's
    train.py (and, with `resume`, holds the training state Lightning needs to continue the run).
    """
    checkpoint = read_checkpoint(path, key)
    name = f"{key}={path}"
    state_dict = checkpoint.get("state_dict")
    if state_dict is None:
        tensors = [k for k, v in checkpoint.items() if isinstance(v, torch.Tensor)]
        what = (
            f"a bare state dict ({len(tensors)} tensor(s), e.g. {some_names(tensors)})"
            if tensors
            else f"a dict with the keys {some_names(list(checkpoint))}"
        )
        raise CheckpointError(
            f"{name} is {what}, not a checkpoint of this project's model: train.py's "
            f"checkpoints hold {', '.join(PROJECT_KEYS)}; {WHERE_CHECKPOINTS_ARE}."
        )
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{name}: its 'state_dict' is not a mapping of names to tensors.")
    foreign = [k for k in state_dict if not k.startswith(MODEL_PREFIXES)]
    if foreign or not state_dict:
        raise CheckpointError(
            f"{name} is a checkpoint of another model: its weights are named "
            f"{some_names(foreign) if foreign else '(none)'}, while this project's model has only "
            f"'net.*' (the U-Net) and 'ema.*' (its moving average); {WHERE_CHECKPOINTS_ARE}."
        )
    missing = [k for k in PROJECT_KEYS[1:] if not isinstance(checkpoint.get(k), Mapping)]
    if missing:
        raise CheckpointError(
            f"{name} has no {' and no '.join(repr(k) for k in missing)}: it was not written by "
            "this project's train.py (another LightningModule, or weights saved alone), so the "
            f"model it holds cannot be rebuilt; {WHERE_CHECKPOINTS_ARE}."
        )
    for entry in ("epoch", "global_step"):
        if entry in checkpoint and not isinstance(checkpoint[entry], int):
            raise CheckpointError(f"{name}: its '{entry}' is not an integer.")
    if resume:
        absent = [k for k in RESUME_KEYS if k not in checkpoint]
        if absent:
            raise CheckpointError(
                f"{name} holds the model but not the training state needed to resume "
                f"({', '.join(absent)} missing): sample or evaluate it (sample.py/eval.py "
                f"ckpt_path=...), or start a new run without ckpt_path."
            )
    return checkpoint


def check_state_dict_compatible(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    path: str | Path,
    key: str = "ckpt_path",
    target: str = "the model",
    hint: str = "",
) -> None:
    """Raise `CheckpointError` listing missing, unexpected and reshaped weights, if any.

    Args:
        expected: the model's state dict (tensors; on the meta device is enough).
        found: the checkpoint's `state_dict`.
        target: what `expected` is, for the message ("the configured model").
        hint: appended to the message (e.g. which config values differ).
    """
    parts = weight_differences({k: v.shape for k, v in expected.items()}, found)
    if not parts:
        return
    raise CheckpointError(
        f"{key}={path} holds another architecture than {target}: {', '.join(parts)}."
        + (f" {hint}" if hint else "")
    )


def weight_differences(
    expected: Mapping[str, Sequence[int]],
    found: Mapping[str, torch.Tensor],
    source: str = "the checkpoint",
    target: str = "the model",
    optional_suffix: str | None = None,
) -> list[str]:
    """What keeps `found` (a state dict) from loading where weights of `expected` shapes belong:
    missing, unexpected and reshaped weights, one phrase each (empty when they fit).

    Names ending in `optional_suffix` may be missing (e.g. BatchNorm's `num_batches_tracked`).
    """
    missing = [
        k
        for k in expected
        if k not in found and not (optional_suffix and k.endswith(optional_suffix))
    ]
    unexpected = [k for k in found if k not in expected]
    reshaped = [
        f"{k}: {list(found[k].shape)} in {source}, {list(expected[k])} in {target}"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing from {source} ({some_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights ({some_names(unexpected)})")
    if reshaped:
        shown = "; ".join(reshaped[:2]) + ("; ..." if len(reshaped) > 2 else "")
        parts.append(f"{len(reshaped)} weights of another shape ({shown})")
    return parts


def model_from_checkpoint(
    checkpoint: Mapping[str, Any], path: str | Path, key: str = "ckpt_path"
) -> LitDiffusion:
    """`LitDiffusion` built from the checkpoint's `run_config["model"]`, its weights loaded (CPU).

    The checkpoint must come from `read_lit_checkpoint`. The model config is instantiated
    with Hydra, as train.py built it, after every `_target_` in it was found among the trusted
    ones (`trusted_targets`): a checkpoint is data, and an arbitrary `_target_` would be code.
    Then the weights are loaded strictly, with a clear error when they do not fit.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    model_cfg = checkpoint["run_config"].get("model")
    if not isinstance(model_cfg, Mapping) or "_target_" not in model_cfg:
        raise CheckpointError(
            f"{key}={path}: its run_config holds no model config with a _target_ to build; it "
            f"was written by another version or edited; {WHERE_CHECKPOINTS_ARE}."
        )
    check_trusted_targets(model_cfg, path, key)
    try:
        model = instantiate(model_cfg, _convert_="object")
    except (InstantiationException, TypeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{key}={path}: its run_config's model does not build ({err}); it was written by "
            f"another version or edited; {WHERE_CHECKPOINTS_ARE}."
        ) from None
    check_state_dict_compatible(
        model.state_dict(),
        checkpoint["state_dict"],
        path,
        key,
        target="the model its run_config describes",
    )
    model.on_load_checkpoint(dict(checkpoint))
    model.load_state_dict(checkpoint["state_dict"])
    return model


TRUSTED_TARGETS_ENV = "DDPM_UNET_TRUSTED_TARGETS"
"""Comma-separated module prefixes whose `_target_`s a checkpoint may name, besides ours."""


def trusted_targets() -> tuple[str, ...]:
    """Prefixes of the `_target_`s a checkpoint's model config may name: this package, torch's
    optimisers, and what `$DDPM_UNET_TRUSTED_TARGETS` adds (e.g. `mylab.nets.` for a network of
    your own)."""
    extra = os.environ.get(TRUSTED_TARGETS_ENV, "")
    return ("ddpm_unet.", "torch.optim.", *(p.strip() for p in extra.split(",") if p.strip()))


def check_trusted_targets(model_cfg: Any, path: str | Path, key: str = "ckpt_path") -> None:
    """Raise `CheckpointError` if any `_target_` in `model_cfg` is outside `trusted_targets()`."""
    allowed = trusted_targets()
    stack, targets = [model_cfg], []
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if "_target_" in node:
                targets.append(str(node["_target_"]))
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    untrusted = [t for t in targets if not t.startswith(allowed)]
    if untrusted:
        raise CheckpointError(
            f"{key}={path} was refused: its model config names {some_names(untrusted)}, outside "
            f"the trusted {', '.join(allowed)}; nothing of it was built. If you trust the file and "
            f"its network, add its module: {TRUSTED_TARGETS_ENV}=<module prefix>."
        )


def check_resume_checkpoint(path: str | Path, model_cfg: Any, key: str = "ckpt_path") -> None:
    """Before training: `path` is a resumable checkpoint whose weights fit `model_cfg`.

    The configured model is built on the meta device (shapes only, no memory, no time), so a
    run that would resume another architecture stops before any data is read, with the
    differing `model.net.*` values named. If the config cannot be built here the architecture
    check is left to the real build, which reports its own error.
    """
    checkpoint = read_lit_checkpoint(path, key, resume=True)
    expected = _configured_state_dict(model_cfg)
    if expected is None:
        return
    check_state_dict_compatible(
        expected,
        checkpoint["state_dict"],
        path,
        key,
        target="the configured model",
        hint=_net_config_diff(checkpoint.get("run_config"), model_cfg)
        + " Resume with the checkpoint's architecture, or start a new run without ckpt_path.",
    )


def _configured_state_dict(model_cfg: Any) -> dict[str, torch.Tensor] | None:
    """The state dict (meta tensors) of the model `model_cfg` builds, or None if it cannot."""
    from hydra.utils import instantiate

    try:
        with torch.device("meta"):
            model = instantiate(model_cfg, _convert_="object")
        return dict(model.state_dict())
    except Exception:  # noqa: BLE001 - the real build reports its own, clearer, error
        return None


def _net_config_diff(run_config: Any, model_cfg: Any) -> str:
    """`model.net.X=<ours> here, <theirs> in the checkpoint` for each differing U-Net value."""
    from omegaconf import DictConfig, OmegaConf

    try:
        theirs = run_config["model"]["net"]
        ours = model_cfg.net
        if isinstance(ours, DictConfig):
            ours = OmegaConf.to_container(ours, resolve=True)
        names = sorted(set(theirs) | set(ours))
    except (KeyError, TypeError, AttributeError):
        return ""
    diffs = [
        f"model.net.{k}={ours.get(k)} here, {theirs.get(k)} in the checkpoint"
        for k in names
        if ours.get(k) != theirs.get(k) and not str(k).startswith("_")
    ]
    return f"The U-Net differs: {'; '.join(diffs)}." if diffs else ""


def _refused_message(name: str, torch_message: str) -> str:
    """The message for a file whose pickle `weights_only=True` refused (torch's advice dropped)."""
    match = re.search(r"GLOBAL ([\w.]+)", torch_message)
    what = f" (e.g. {match.group(1)})" if match else ""
    return (
        f"{name} was refused: it holds Python objects{what} that checkpoints of this project "
        "never contain, and that could run code when unpickled; it was read as data only and "
        f"nothing in it was run. Use a checkpoint you trust; {WHERE_CHECKPOINTS_ARE}."
    )


def describe_archive_error(err: BaseException, file: Path) -> str:
    """What a zip file that torch cannot read is, in words (no torch advice)."""
    text = str(err)
    if "central directory" in text or isinstance(err, EOFError | zipfile.BadZipFile):
        return (
            f"a damaged or truncated archive ({file.stat().st_size} bytes; an interrupted "
            "save or copy leaves such files)"
        )
    if "not in a subdirectory" in text or "data.pkl" in text or "file not found" in text:
        return "a zip archive, but not one written by torch.save"
    return f"an archive torch cannot read ({type(err).__name__})"


def describe_bytes(head: bytes) -> str:
    """What the first bytes of a file that is not a zip archive look like."""
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return "a plain Python pickle (not unpickled)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of `head`
            return "binary data of an unknown kind"
        text = head[: err.start].decode("utf-8")
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file (starting {text[:40]!r})"
    return "binary data of an unknown kind"


def some_names(names: list[str]) -> str:
    """The first few of `names`, quoted, with an ellipsis when there are more."""
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (", ..." if len(names) > _MAX_LISTED else "")
