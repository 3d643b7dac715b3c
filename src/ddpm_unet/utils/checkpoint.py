"""Reading torch.save files from users (checkpoints, Inception weights) as data, never code.

`read_torch_file` is the one reader: `torch.load(weights_only=True)`, which refuses any pickled
object but tensors and plain containers, and every way a file can fail (missing bytes, text,
a plain pickle, a damaged archive, a refused object) becomes one `UserError` of the caller's type
naming the file, what it is instead and the fix; torch's advice to reload with
`weights_only=False` never reaches the user. A checkpoint must then be one of this project's
train.py (`read_lit_checkpoint`), whose model config names only trusted `_target_`s and whose
weights fit (`model_from_checkpoint`, `check_resume_checkpoint`).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
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
MODEL_PREFIXES = ("net.", "ema.")  # every weight of LitDiffusion: the U-Net and its EMA copy
PROJECT_KEYS = ("state_dict", "hyper_parameters", "run_config")  # what train.py adds to Lightning's
RESUME_KEYS = ("optimizer_states", "lr_schedulers", "loops", "epoch", "global_step")
TRUSTED_TARGETS_ENV = "DDPM_UNET_TRUSTED_TARGETS"  # more module prefixes a checkpoint may name
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]  # before 1.6
_REFUSAL = re.compile(r"GLOBAL|Unsupported|blocked|not an allowed")  # weights_only's refusals
_MAX_LISTED = 4  # keys named per kind of mismatch; the message says how many there are


class CheckpointError(UserError):
    """A file given as a checkpoint that cannot be used; the message names it and says why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path is unset or names no file."""


def read_torch_file(
    file: Path, name: str, what: str, fix: str, error: type[UserError] = UserError
) -> Any:
    """What `torch.save` wrote to `file` (either format), read as data on the CPU.

    Zip archives are memory-mapped, so reading a few entries of a large checkpoint costs little.

    Args:
        name: how the user named the file (`ckpt_path=x.ckpt`), first in every message.
        what: what the file should be ("a checkpoint of this project").
        fix: the end of every message: where the right file is.
        error: the exception raised, `error(f"{name} <what is wrong>; {fix}.")`.
    """

    def fail(problem: str) -> UserError:
        return error(f"{name} {problem}; {fix}.")

    try:
        with open(file, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        raise fail(f"cannot be read ({err.strerror or err})") from None
    if not head:
        raise fail(f"is empty (0 bytes), not {what}: an interrupted save or copy leaves such files")
    is_zip = head.startswith(ZIP_MAGIC)
    if not (is_zip or head.startswith(LEGACY_MAGIC)):
        # Neither format torch.save writes: described from its bytes, never unpickled.
        what_it_is = _describe_bytes(head)
        raise fail(f"is not {what}: it is {what_it_is}, not a file written by torch.save")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" on refused files
            return torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # noqa: BLE001 - a malformed file can raise anything
        text = str(err)
        if isinstance(err, pickle.UnpicklingError) and _REFUSAL.search(text):
            refused = re.search(r"GLOBAL ([\w.]+)", text)
            raise fail(
                f"was refused: it holds Python objects{f' (e.g. {refused[1]})' if refused else ''} "
                f"that {what} never contains, and that could run code when unpickled; it was read "
                "as data only and nothing in it was run"
            ) from None
        if not is_zip:
            damage = "a damaged or truncated file of torch.save's older format"
        elif isinstance(err, pickle.UnpicklingError):
            damage = "a damaged archive (its pickle is unreadable)"
        elif isinstance(err, EOFError | zipfile.BadZipFile) or not zipfile.is_zipfile(file):
            damage = (
                f"a damaged or truncated archive ({file.stat().st_size} bytes; an interrupted "
                "save or copy leaves such files)"
            )
        elif "not in a subdirectory" in text or "data.pkl" in text or "file not found" in text:
            damage = "a zip archive, but not one written by torch.save"
        else:
            damage = f"an archive torch cannot read ({type(err).__name__})"
        raise fail(f"is not {what}: it is {damage}") from None


def _describe_bytes(head: bytes) -> str:
    """What the first bytes of a file that torch.save did not write look like."""
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


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The dict saved in checkpoint `path` (`read_torch_file`); `key` is the config key the path
    came from, for messages.

    Raises:
        CheckpointNotFoundError: `path` does not exist.
        CheckpointError: it is a folder, or no torch.save file of a dict of tensors and plain data.
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
    checkpoint = read_torch_file(
        file, name, "a checkpoint of this project", WHERE_CHECKPOINTS_ARE, CheckpointError
    )
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
    absent = [k for k in RESUME_KEYS if k not in checkpoint]
    if resume and absent:
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
    """Raise `CheckpointError` naming the weights of `found` (a checkpoint's state dict) that are
    missing, unexpected or reshaped against `expected` (the model's; meta tensors suffice), if
    any. `target` names the model ("the configured model"); `hint` ends the message."""
    parts = weight_differences({k: v.shape for k, v in expected.items()}, found)
    if parts:
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
    """`LitDiffusion` built from the `run_config["model"]` of a checkpoint `read_lit_checkpoint`
    accepted, as train.py built it, its weights loaded strictly (CPU). Its `_target_`s must be
    trusted (`check_trusted_targets`): a checkpoint is data, and an arbitrary `_target_` is code.
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


def check_trusted_targets(model_cfg: Any, path: str | Path, key: str = "ckpt_path") -> None:
    """Raise `CheckpointError` if a `_target_` in `model_cfg` is outside the trusted prefixes:
    this package, torch's optimisers, and those `$DDPM_UNET_TRUSTED_TARGETS` adds (comma-separated,
    e.g. `mylab.nets.` for a network of your own)."""
    extra = os.environ.get(TRUSTED_TARGETS_ENV, "")
    allowed = ("ddpm_unet.", "torch.optim.", *(p.strip() for p in extra.split(",") if p.strip()))
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
    from hydra.utils import instantiate

    checkpoint = read_lit_checkpoint(path, key, resume=True)
    try:
        with torch.device("meta"):
            expected = instantiate(model_cfg, _convert_="object").state_dict()
    except Exception:  # noqa: BLE001 - the real build reports its own, clearer, error
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


def _net_config_diff(run_config: Any, model_cfg: Any) -> str:
    """`model.net.X=<ours> here, <theirs> in the checkpoint` for each differing U-Net value."""
    from omegaconf import OmegaConf

    try:
        theirs = run_config["model"]["net"]
        ours = OmegaConf.to_container(model_cfg.net, resolve=True)
        names = sorted(set(theirs) | set(ours))
    except (KeyError, TypeError, AttributeError, ValueError):
        return ""
    diffs = [
        f"model.net.{k}={ours.get(k)} here, {theirs.get(k)} in the checkpoint"
        for k in names
        if ours.get(k) != theirs.get(k) and not str(k).startswith("_")
    ]
    return f"The U-Net differs: {'; '.join(diffs)}." if diffs else ""


def some_names(names: list[str]) -> str:
    """The first few of `names`, quoted, with an ellipsis when there are more."""
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (", ..." if len(names) > _MAX_LISTED else "")
