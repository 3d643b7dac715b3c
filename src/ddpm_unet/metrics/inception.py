"""Where the InceptionV3 weights of FID/KID/IS come from, and a clear error when they are missing.

torch-fidelity and torchmetrics compute FID, KID and the Inception Score with the same network:
the TensorFlow 2015-12-05 InceptionV3 ported to PyTorch (`FeatureExtractorInceptionV3`), whose
weights are one file, `weights-inception-2015-12-05-6726825d.pth` (~95 MB). Left alone, both
libraries download it with `torch.hub.load_state_dict_from_url` into torch.hub's cache; offline
that fails deep inside the metric, often after minutes of sampling, or hangs on a stalled
connection. So every entry point resolves the file up front, before any sampling:

1. the config value (e.g. `inception_weights=/path/to/file`), if set; it must exist;
2. else the environment variable `DDPM_UNET_INCEPTION_WEIGHTS`, if set; it must exist;
3. else torch.hub's cache, `<torch.hub.get_dir()>/checkpoints/<file>` (where torch-fidelity and
   torchmetrics look and download to: `$TORCH_HOME/hub/checkpoints/`, `~/.cache/torch/...`);
4. else, if downloading is allowed, the file is fetched from torch-fidelity's URL into that cache
   (as torch-fidelity would do), with timeouts so that no network fails fast instead of hanging;
5. else `InceptionWeightsNotFoundError`, naming the file, the config key, the environment
   variable and the cache directory to put it in.

The weights file is data, never code. torch-fidelity and torchmetrics `torch.load` the file they
are given with `weights_only=False`, which runs whatever a planted pickle holds. So the resolved
file is read here with `weights_only=True` and checked against the network (a state dict of
float tensors with exactly the extractor's names and shapes; `load_inception_weights`) as soon
as it is found, before any sampling, and the libraries only ever get a private copy written from
the checked tensors a moment before (`verified_weights_copy`), never the user's file. A file that
is not such a state dict is an `InceptionWeightsError` naming it and saying what it is instead.
The user's file is what the messages, `metrics.json` and the cache key name: its hash goes into
the cache key of the reference statistics (other weights, other features).

`make_random_inception_weights` writes a file in the same format with a seeded random
initialisation: the real architecture and code paths without the download, for tests and speed
benchmarks (its FID values mean nothing).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import re
import socket
import tempfile
import threading
import urllib.parse
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm_unet.utils.checkpoint import (
    WEIGHTS_ONLY_REFUSAL,
    ZIP_MAGIC,
    describe_archive_error,
    describe_bytes,
    some_names,
    weight_differences,
)
from ddpm_unet.utils.errors import UserError

log = logging.getLogger(__name__)

INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
"""The file torch-fidelity and torchmetrics load (the name torch.hub caches it under)."""

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    + INCEPTION_WEIGHTS_FILENAME
)
"""torch-fidelity's download address (`torch_fidelity.feature_extractor_inceptionv3`)."""

INCEPTION_WEIGHTS_ENV = "DDPM_UNET_INCEPTION_WEIGHTS"
"""Environment variable holding the path of the weights file (used when the config has none)."""

CONNECT_TIMEOUT_S = 10.0
"""Seconds allowed to resolve the download host: without network the check ends here, instead of
in a DNS lookup that socket timeouts do not cover."""

DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
"""Socket timeout of the download: `urllib` waits forever on a stalled connection without one."""


OPTIONAL_SUFFIX = ".num_batches_tracked"
"""Batch-norm step counters: not in the published file (converted from TensorFlow weights, see
torch-fidelity's `util_convert_inception_weights.py`), filled in by `load_state_dict`, unused."""


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # the refused object in torch's message
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]
"""How files of torch.save's format before torch 1.6 begin (a pickled magic number); what the
published weights may use. Other pickles are never unpickled, not even as data."""


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The InceptionV3 weights file is not available; the message says where to put it."""


class InceptionWeightsError(UserError):
    """A file given as the InceptionV3 weights is not a weights file (or was refused as code);
    the message names it, says what it is instead, and where to get the right file."""


def default_weights_path() -> Path:
    """torch.hub's cache location of the weights, where torch-fidelity/torchmetrics look for it:
    `<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME


def weights_not_found_message(reason: str, config_key: str = "inception_weights") -> str:
    """The error text: what is missing, why, and the three ways to provide it."""
    cache = default_weights_path()
    name = INCEPTION_WEIGHTS_FILENAME
    return (
        f"InceptionV3 weights file '{name}' not found: {reason}.\n"
        f"FID, KID and the Inception Score need the weights torch-fidelity uses (~95 MB). "
        f"Provide them in one of these ways:\n"
        f"  * put the file in the cache directory {cache.parent}/ (found automatically), or\n"
        f"  * set the config value {config_key}=/path/to/{name}, or\n"
        f"  * set the environment variable {INCEPTION_WEIGHTS_ENV}=/path/to/{name}.\n"
        f"On a machine with internet access, download it from {INCEPTION_WEIGHTS_URL} "
        f"(or run torch-fidelity once there, which fills {cache.parent}/) and copy it over."
    )


def _check_reachable(url: str, timeout_s: float) -> None:
    """Raise `OSError` if the host of `url` cannot be resolved within `timeout_s` seconds.

    The lookup runs in a daemon thread: `getaddrinfo` ignores socket timeouts, and on a machine
    without network it may otherwise block for a long time.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    outcome: dict[str, BaseException | None] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            outcome["error"] = None
        except BaseException as err:  # reported to the caller below
            outcome["error"] = err

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "error" not in outcome:
        raise OSError(f"resolving {host} took more than {timeout_s:.0f} s (no network?)")
    if outcome["error"] is not None:
        raise OSError(f"cannot resolve {host}: {outcome['error']}") from outcome["error"]


def download_weights(
    destination: str | os.PathLike[str],
    url: str = INCEPTION_WEIGHTS_URL,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    socket_timeout_s: float = DOWNLOAD_SOCKET_TIMEOUT_S,
) -> Path:
    """Download `url` to `destination`, atomically (into `<destination>.<pid>.partial`, then
    renamed), with a progress bar.

    The socket timeout is this request's own (`urlopen(timeout=...)`), not the process-wide
    default: other threads' connections (W&B, a DataLoader) keep theirs.

    Raises:
        OSError: the host cannot be reached or the transfer stalls (timeouts above).
    """
    import urllib.request

    from tqdm.auto import tqdm

    destination = Path(destination)
    _check_reachable(url, connect_timeout_s)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f"{destination.name}.{os.getpid()}.partial")
    log.info("Downloading the Inception weights from %s to %s", url, destination)
    request = urllib.request.Request(url, headers={"User-Agent": "ddpm-unet"})
    try:
        with urllib.request.urlopen(request, timeout=socket_timeout_s) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(partial, "wb") as handle,
                tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar,
            ):
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    bar.update(len(block))
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def resolve_inception_weights(
    path: str | os.PathLike[str] | None = None,
    download: bool = True,
    config_key: str = "inception_weights",
    download_key: str | None = None,
    url: str = INCEPTION_WEIGHTS_URL,
) -> Path:
    """The path of the InceptionV3 weights file, found as described in the module docstring and
    checked (`load_inception_weights`): what it returns is a usable weights file.

    Args:
        path: the config value (None or "" when unset).
        download: fetch the file into torch.hub's cache when it is nowhere else.
        config_key: the config key of `path`, named in the error message.
        download_key: the config key of `download`, named when downloading is disabled.
        url: where to download from (torch-fidelity's address).

    Raises:
        InceptionWeightsNotFoundError: the file is missing and cannot be downloaded.
        InceptionWeightsError: the file found is not an InceptionV3 weights file.
    """
    if path not in (None, ""):
        candidate = Path(os.path.expanduser(os.fspath(path)))
        if candidate.is_file():
            return _checked(candidate, f"{config_key}={os.fspath(path)}")
        raise InceptionWeightsNotFoundError(
            weights_not_found_message(f"{config_key}={os.fspath(path)} does not exist", config_key)
        )
    env_value = os.environ.get(INCEPTION_WEIGHTS_ENV, "")
    if env_value:
        candidate = Path(os.path.expanduser(env_value))
        if candidate.is_file():
            return _checked(
                candidate, f"the environment variable {INCEPTION_WEIGHTS_ENV}={env_value}"
            )
        raise InceptionWeightsNotFoundError(
            weights_not_found_message(
                f"the environment variable {INCEPTION_WEIGHTS_ENV}={env_value} names a file that "
                "does not exist",
                config_key,
            )
        )
    cached = default_weights_path()
    cache_fix = f"delete it ({cached}) to download it again, or set {config_key}=/path/to/the/file"
    if cached.is_file():
        return _checked(cached, f"the cached weights file {cached}", fix=cache_fix)
    if not download:
        switch = f" ({download_key}=false)" if download_key else ""
        raise InceptionWeightsNotFoundError(
            weights_not_found_message(
                f"it is not in the cache {cached} and downloading is disabled{switch}", config_key
            )
        )
    try:
        downloaded = download_weights(cached, url)
    except Exception as err:  # no network, proxy, HTTP error, disk: all mean "not available"
        raise InceptionWeightsNotFoundError(
            weights_not_found_message(
                f"it is not in the cache {cached} and downloading it failed "
                f"({type(err).__name__}: {err})",
                config_key,
            )
        ) from err
    try:
        return _checked(downloaded, f"the file downloaded from {url} to {cached}")
    except InceptionWeightsError:
        # A proxy's error page or a changed release: not kept where it would be found next time.
        downloaded.unlink(missing_ok=True)
        raise


def _checked(path: Path, source: str, fix: str = "") -> Path:
    """`path` after `load_inception_weights(path, source, fix)` accepted it (tensors dropped)."""
    load_inception_weights(path, source, fix)
    return path


def weights_error(source: str, problem: str, fix: str = "") -> InceptionWeightsError:
    """The error for a file that is no usable weights file: `<source> <problem>; <fix>.`, the
    default fix naming the published file and where to get it (never torch's advice to load with
    fewer restrictions)."""
    fix = fix or (
        f"use the file torch-fidelity publishes, {INCEPTION_WEIGHTS_FILENAME} "
        f"({INCEPTION_WEIGHTS_URL})"
    )
    return InceptionWeightsError(f"{source} {problem}; {fix}.")


def _build_extractor(features: list[str]) -> nn.Module:
    """torch-fidelity's `FeatureExtractorInceptionV3` as constructed, without its weight loading
    (on whatever device is current: `meta` gives the shapes at no cost)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        """The extractor without the weight loading of its constructor."""

        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ANN001
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # the constructor torch.loads this instead of downloading
        return _Unloaded("inception-v3-compat", features, feature_extractor_weights_path=empty)


@functools.lru_cache(maxsize=1)
def expected_weight_shapes() -> dict[str, tuple[int, ...]]:
    """`{name: shape}` of every entry of the extractor's state dict (566 entries, 94 of them the
    optional `*.num_batches_tracked`), from the network built on the meta device."""
    with torch.device("meta"):
        net = _build_extractor(["2048"])
    return {name: tuple(tensor.shape) for name, tensor in net.state_dict().items()}


def load_inception_weights(
    path: str | os.PathLike[str], source: str | None = None, fix: str = ""
) -> dict[str, torch.Tensor]:
    """The state dict `{name: tensor}` of InceptionV3 weights file `path`, read as data only.

    `torch.load(weights_only=True)` (zip archives and torch's older format alike) refuses any
    pickled object but tensors and plain containers, so nothing in the file runs; the result must
    be what torch-fidelity's `FeatureExtractorInceptionV3` loads: float tensors with exactly its
    names and shapes (`expected_weight_shapes`; the `*.num_batches_tracked` counters may be
    absent, as they are in the published file).

    Args:
        source: how the user named the file (`inception_weights=/x.pth`), for messages.
        fix: what the message advises instead of the default (the published file's address).

    Raises:
        InceptionWeightsError: naming the file and saying what it is instead: unreadable, empty,
            not a torch.save file (text, random bytes, a damaged archive, a plain pickle),
            refused (it holds Python objects that could run code: nothing of it was run), not a
            dict of tensors, or the weights of another network (which names/shapes differ).
    """
    file = Path(path)
    name = source or f"the InceptionV3 weights file {os.fspath(path)}"
    try:
        with open(file, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        raise weights_error(name, f"cannot be read ({err.strerror or err})", fix) from None
    if not head:
        raise weights_error(name, "is empty (0 bytes), not an InceptionV3 weights file", fix)
    is_zip = head.startswith(ZIP_MAGIC)
    if not (is_zip or head.startswith(_LEGACY_MAGIC)):
        # Neither format torch.save writes: described from its bytes, never unpickled.
        problem = f"is not an InceptionV3 weights file: it is {describe_bytes(head)}"
        raise weights_error(name, problem + ", not a file written by torch.save", fix)
    state = _load_data_only(file, name, is_zip, fix)
    _check_state_dict(state, name, fix)
    return dict(state)


def _load_data_only(file: Path, name: str, is_zip: bool, fix: str) -> Any:
    """`torch.load(file, weights_only=True)`; every failure becomes an `InceptionWeightsError`."""
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": torch's notes on files refused anyway.
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if WEIGHTS_ONLY_REFUSAL.search(str(err)):
            match = _GLOBAL.search(str(err))
            what = f" (e.g. {match.group(1)})" if match else ""
            raise weights_error(
                name,
                f"was refused: it holds Python objects{what} that a weights file never contains "
                "(only tensors), and that could run code when unpickled; it was read as data "
                "only and nothing in it was run",
                fix,
            ) from None
        what = "a damaged archive" if is_zip else "a damaged file of torch.save's older format"
        what += " (its pickle is unreadable)"
        raise weights_error(
            name, f"is not an InceptionV3 weights file: it is {what}", fix
        ) from None
    except Exception as err:  # noqa: BLE001 - a malformed file can raise anything
        if is_zip and not zipfile.is_zipfile(file):  # no central directory: cut short
            err = zipfile.BadZipFile(str(err))
        what = (
            describe_archive_error(err, file)
            if is_zip
            else "a damaged or truncated file of torch.save's older format"
        )
        raise weights_error(
            name, f"is not an InceptionV3 weights file: it is {what}", fix
        ) from None


def _check_state_dict(state: Any, name: str, fix: str) -> None:
    """Raise `InceptionWeightsError` unless `state` is the extractor's state dict (see
    `load_inception_weights`)."""
    if not isinstance(state, Mapping):
        problem = f"holds a {type(state).__name__}, not a state dict of InceptionV3 weights"
        raise weights_error(name, problem, fix)
    not_tensors = [
        str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))
    ]
    if not_tensors:
        problem = (
            f"is not a state dict of tensors: its entries {some_names(not_tensors)} are not "
            "tensors named by strings"
        )
        raise weights_error(name, problem, fix)
    expected = expected_weight_shapes()
    parts = weight_differences(
        expected, state, "the file", "the network", optional_suffix=OPTIONAL_SUFFIX
    )
    not_float = [
        f"{k} ({state[k].dtype})"
        for k in expected
        if k in state and not k.endswith(OPTIONAL_SUFFIX) and not state[k].is_floating_point()
    ]
    if not_float:
        parts.append(f"{len(not_float)} weights that are not floats ({some_names(not_float)})")
    if parts:
        problem = (
            "holds the weights of another network, not those of torch-fidelity's InceptionV3 "
            f"(FeatureExtractorInceptionV3): {', '.join(parts)}"
        )
        raise weights_error(name, problem, fix)


@contextmanager
def verified_weights_copy(
    path: str | os.PathLike[str], source: str | None = None
) -> Iterator[Path]:
    """A private copy of weights file `path`, written from its checked tensors, for one use.

    torch-fidelity and torchmetrics `torch.load` the file they are given with
    `weights_only=False`; the path yielded here names a file this function wrote a moment before
    from the tensors `load_inception_weights` accepted (a plain dict of tensors), in a folder
    only this user can enter, so they never unpickle a file from a user. It is deleted on exit.

    Raises:
        InceptionWeightsError: as `load_inception_weights`.
    """
    state = {k: v.detach() for k, v in load_inception_weights(path, source).items()}
    with tempfile.TemporaryDirectory(prefix="ddpm-unet-inception-") as folder:  # mode 0700
        copy = Path(folder) / INCEPTION_WEIGHTS_FILENAME
        torch.save(state, copy)
        del state  # ~95 MB: the library loads its own copy
        yield copy


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the weights file (computed once per process per file version, ~0.3 s)."""
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def make_random_inception_weights(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a state dict for torch-fidelity's `FeatureExtractorInceptionV3` with random weights.

    Same keys, shapes and format as the real file (a `torch.save`d state dict), so
    torch-fidelity and torchmetrics load it through their normal code paths. The convolutions get
    a He (fan-in, ReLU) initialisation and batch norm stays the identity, so activations keep their
    scale through the ~50 layers (PyTorch's default init shrinks them ~6x per layer, and the
    2048-d features would be ~1e-20: every FID would be 0). For tests and benchmarks only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fork_devices: list[int] = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        net = _build_extractor(["2048"])
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=module.in_features**-0.5)
                torch.nn.init.zeros_(module.bias)
    torch.save(net.state_dict(), path)
    return path
