"""Checkpoints: read as data only, written atomically, and the callbacks that keep the newest
finite state on disk (`last.ckpt` when training ends, `interrupted.ckpt` on a signal).

Every way a file can fail becomes one `UserError` naming the file, what it is instead and the fix,
decided from the file's structure, never from torch's messages (whose advice to reload with
`weights_only=False` never reaches the user).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import pickletools
import signal
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.files import atomic_write
from ddpm_unet.utils.interrupts import Interrupted, raise_if_interrupted

if TYPE_CHECKING:
    from ddpm_unet.models.lit_diffusion import LitDiffusion

log = logging.getLogger(__name__)
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
# what a pickle of tensors and plain containers imports (named in no refusal message)
TENSOR_GLOBALS = ("torch.", "collections.", "builtins.", "_codecs.")
_MAX_LISTED = 4  # keys named per kind of mismatch; the message says how many there are


class CheckpointError(UserError):
    """A file given as a checkpoint that cannot be used; the message names it and says why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path is unset or names no file."""


def read_torch_file(
    file: Path, name: str, what: str, fix: str, error: type[UserError] = UserError
) -> Any:
    """What `torch.save` wrote to `file` (either format), read with `weights_only=True` on the
    CPU; zip archives are memory-mapped, so reading a few entries of a large file costs little.

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
        imported = (
            _pickle_globals(file, is_zip) if isinstance(err, pickle.UnpicklingError) else None
        )
        if imported is not None:  # a whole pickle, refused: it imports more than tensors
            odd = [name for name in imported if not name.startswith(TENSOR_GLOBALS)]
            raise fail(
                f"was refused: it holds Python objects{f' (e.g. {odd[0]})' if odd else ''} that "
                f"{what} never contains, and that could run code when unpickled; it was read as "
                "data only and nothing in it was run"
            ) from None
        if not is_zip:
            damage = "a damaged or truncated file of torch.save's older format"
        elif isinstance(err, pickle.UnpicklingError):
            damage = "a damaged archive (its pickle is unreadable)"
        elif not zipfile.is_zipfile(file):
            damage = (
                f"a damaged or truncated archive ({file.stat().st_size} bytes; an interrupted "
                "save or copy leaves such files)"
            )
        elif _data_pickle_name(file) is None:
            damage = "a zip archive, but not one written by torch.save"
        else:
            damage = f"an archive torch cannot read ({type(err).__name__})"
        raise fail(f"is not {what}: it is {damage}") from None


def _data_pickle_name(file: Path) -> str | None:
    """The `<name>/data.pkl` entry torch.save writes into its zip archive, if there is one."""
    with zipfile.ZipFile(file) as archive:
        return next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)


def _pickle_globals(file: Path, is_zip: bool) -> list[str] | None:
    """The `module.name`s the main pickle of a torch.save file imports, in order; None when the
    pickle does not parse (a damaged file). Read with `pickletools`, which runs nothing."""
    try:
        if is_zip:
            name = _data_pickle_name(file)
            if name is None:
                return None
            with zipfile.ZipFile(file) as archive:
                stream: Any = io.BytesIO(archive.read(name))
        else:  # the older format: magic number, protocol and system-info pickles, then the data
            stream = io.BytesIO(file.read_bytes())
            for _ in range(3):
                for _ in pickletools.genops(stream):
                    pass
        names: list[str] = []
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]))
            elif isinstance(arg, str):
                strings.append(arg)
        return names
    except (ValueError, EOFError, OSError, zipfile.BadZipFile):
        return None


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
    """The dict saved in checkpoint `path` (`read_torch_file`); `key` names the path in messages.
    Raises `CheckpointNotFoundError` (no such file) or `CheckpointError`."""
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
    train.py (and, with `resume`, holds the training state Lightning needs to continue the run)."""
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
    target: str,
    hint: str = "",
) -> None:
    """Raise `CheckpointError` naming the weights of `found` (a checkpoint's state dict) that do
    not fit `expected` (the model's; meta tensors suffice). `target` names the model; `hint` ends
    the message."""
    parts = weight_differences({k: v.shape for k, v in expected.items()}, found)
    if parts:
        raise CheckpointError(
            f"ckpt_path={path} holds another architecture than {target}: {', '.join(parts)}.{hint}"
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


def model_from_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> LitDiffusion:
    """`LitDiffusion` built from the `run_config["model"]` of a checkpoint `read_lit_checkpoint`
    accepted, as train.py built it, its weights loaded strictly (CPU). Its `_target_`s must be
    trusted (`check_trusted_targets`): a checkpoint is data, and an arbitrary `_target_` is code.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    model_cfg = checkpoint["run_config"].get("model")
    if not isinstance(model_cfg, Mapping) or "_target_" not in model_cfg:
        raise CheckpointError(
            f"ckpt_path={path}: its run_config holds no model config with a _target_ to build; it "
            f"was written by another version or edited; {WHERE_CHECKPOINTS_ARE}."
        )
    check_trusted_targets(model_cfg, path)
    try:
        model = instantiate(model_cfg, _convert_="object")
    except (InstantiationException, TypeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"ckpt_path={path}: its run_config's model does not build ({err}); it was written by "
            f"another version or edited; {WHERE_CHECKPOINTS_ARE}."
        ) from None
    check_state_dict_compatible(
        model.state_dict(), checkpoint["state_dict"], path, "the model its run_config describes"
    )
    model.on_load_checkpoint(dict(checkpoint))
    model.load_state_dict(checkpoint["state_dict"])
    return model


def check_trusted_targets(model_cfg: Any, path: str | Path) -> None:
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
            f"ckpt_path={path} was refused: its model config names {some_names(untrusted)}, "
            f"outside the trusted {', '.join(allowed)}; nothing of it was built. If you trust the "
            f"file and its network, add its module: {TRUSTED_TARGETS_ENV}=<module prefix>."
        )


def check_resume_checkpoint(path: str | Path, model_cfg: Any) -> None:
    """Before training: `path` is a resumable checkpoint whose weights fit `model_cfg`, built on
    the meta device (shapes only, no memory, no time), so that resuming another architecture
    stops before any data is read. A config that does not build is left to the real build."""
    from hydra.utils import instantiate

    checkpoint = read_lit_checkpoint(path, resume=True)
    try:
        with torch.device("meta"):
            expected = instantiate(model_cfg, _convert_="object").state_dict()
    except Exception:  # noqa: BLE001 - the real build reports its own, clearer, error
        return
    diff = _net_config_diff(checkpoint.get("run_config"), model_cfg)
    check_state_dict_compatible(
        expected,
        checkpoint["state_dict"],
        path,
        "the configured model",
        f" {diff} Resume with the checkpoint's architecture, or start a new run without ckpt_path.",
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


# ------------------------------------------------------------------------------------------------
# writing: atomic files, and the callbacks that decide what is on disk
# ------------------------------------------------------------------------------------------------

_NOT_WRITABLE = "the folder is not writable: fix its permissions or use another paths.log_dir"
_NOT_A_FOLDER = "a parent of it is a file, not a folder: point paths.log_dir at a folder"
_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or point paths.log_dir at another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or point paths.log_dir elsewhere",
    errno.EACCES: _NOT_WRITABLE,
    errno.EPERM: _NOT_WRITABLE,
    errno.EROFS: "the filesystem is read-only: point paths.log_dir at a writable folder",
    errno.ENOTDIR: _NOT_A_FOLDER,
    errno.EEXIST: _NOT_A_FOLDER,
}


class CheckpointSaveError(UserError):
    """A checkpoint could not be written (disk full, unwritable folder); names the file and fix."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves go through `atomic_write` (configs/trainer/default.yaml
    `plugins`); remote URLs (`s3://`, ...) are left to Lightning's fsspec saving.

    Lightning stages the file in `$TMPDIR` and copies it over: not atomic when `$TMPDIR` is another
    filesystem than the run folder (tmpfs `/tmp`, logs on NFS), so a kill during the copy left a
    truncated `last.ckpt`. Here the temp file is written beside the target.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        remote = "://" in str(path) and not str(path).startswith("file://")
        if remote or storage_options is not None:  # Lightning refuses storage_options
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            atomic_write(path, lambda fh: torch.save(checkpoint, fh))
        except OSError as err:
            hint = _HINTS.get(err.errno or 0, "check that the folder exists and is writable")
            raise CheckpointSaveError(
                f"could not save the checkpoint {path}: {err.strerror or err} ({hint}). "
                f"Nothing partial was left; earlier checkpoints in {Path(path).parent} are intact."
            ) from err


class LastStateCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` is also written when training ends, and that refuses to
    save non-finite weights.

    Lightning's `save_last=True` rewrites `last.ckpt` only when a top-k checkpoint is saved (and at
    the end only if none ever was), so after a final validation that did not improve the monitored
    metric `last.ckpt` held an older step than the run ended at.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self.dirpath and not trainer.fast_dev_run:
            self.last_model_path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(self.last_model_path, weights_only=self.save_weights_only)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Before every write: NaN/inf weights stop the run here, before Lightning's best-k
        # bookkeeping deletes a good file for one never written.
        from ddpm_unet.callbacks.divergence import TrainingDivergedError  # callbacks import us

        tensors = [*pl_module.named_parameters(), *pl_module.named_buffers()]
        bad = [n for n, t in tensors if t.is_floating_point() and not bool(t.isfinite().all())]
        if bad:
            raise TrainingDivergedError(
                f"{len(bad)} weights hold NaN/inf at step {trainer.global_step} (e.g. {bad[0]}): "
                "training diverged, and no checkpoint of them was saved; the checkpoints on disk "
                "hold the last finite state. Try a lower learning rate (model.optimizer.lr) or "
                "gradient clipping (trainer.gradient_clip_val=1.0)."
            )


class InterruptCheckpoint(Checkpoint):
    """Ends training at the first safe point after SIGTERM/SIGINT (`ddpm_unet.utils.interrupts`)
    and writes `<dirpath>/<filename>.ckpt` then, or after a crash once training made progress;
    removed after a run that completes.

    Nothing is written for a user error (bad input, a diverged run, a full disk) or before any
    training step of this process (an untrained model). Not Lightning's `OnExceptionCheckpoint`,
    whose presence makes `trainer.fit(ckpt_path=None)` resume from the newest checkpoint in the
    folder instead of starting afresh.
    """

    def __init__(self, dirpath: str, filename: str = "interrupted") -> None:
        super().__init__()
        if not filename:
            raise ValueError("filename='' : give a file name, e.g. filename='interrupted'.")
        self.ckpt_path = os.path.join(dirpath, filename + ".ckpt")
        self.saved_path: str | None = None
        self._start_step = 0

    @staticmethod
    def _stop_if_interrupted(trainer: L.Trainer) -> None:
        """Raise `Interrupted` on every rank when a signal reached any (one all-reduce)."""
        try:
            raise_if_interrupted()
            signum = None
        except Interrupted as stop:
            signum = stop.signum
        if trainer.strategy.reduce_boolean_decision(signum is not None, all=False):
            raise Interrupted(signum or signal.SIGTERM)  # what Lightning's launcher sends ranks

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step  # after a resumed checkpoint is restored
        self._stop_if_interrupted(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        self._stop_if_interrupted(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        # Not at a batch's end: the step's lr-schedule update and progress counters come after
        # `on_train_batch_end`, and a checkpoint saved there resumes one schedule step behind.
        self._stop_if_interrupted(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_interrupted(trainer)  # after the final sample grid and last.ckpt

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        interrupted = isinstance(exception, Interrupted | SIGTERMException)
        if interrupted or not (
            isinstance(exception, UserError | KeyboardInterrupt)  # KeyboardInterrupt: 2nd Ctrl-C
            or trainer.global_step <= self._start_step
        ):
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Write the checkpoint now (`saved_path` stays None if it cannot be written)."""
        try:
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as err:  # never hide the error that stopped the run
            log.error("Could not write %s: %s", self.ckpt_path, err)
            return
        self.saved_path = self.ckpt_path
        log.info("Saved %s at step %d.", self.ckpt_path, trainer.global_step)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # After a fit that completed: a stale interrupted.ckpt (e.g. the one this run resumed
        # from) would suggest the run still needs resuming.
        if self.saved_path is None and trainer.is_global_zero and os.path.isfile(self.ckpt_path):
            os.remove(self.ckpt_path)
