"""Where the InceptionV3 weights of FID/KID/IS come from, read as data and checked up front.

torch-fidelity and torchmetrics use one file (~95 MB, the TensorFlow InceptionV3 ported to
PyTorch) and download it themselves deep inside a metric, after minutes of sampling. So every entry
point resolves it first (`resolve_inception_weights`): the given path, else
`$DDPM_UNET_INCEPTION_WEIGHTS`, else torch.hub's cache (where both libraries look), else a download
into that cache with timeouts, else `InceptionWeightsNotFoundError` saying where to put the file.

Both libraries `torch.load` the file with `weights_only=False`, which would run a planted pickle.
So the user's file is only read here, as data (`load_inception_weights`), and the libraries get a
private copy written from the checked tensors (`verified_weights_copy`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch
from torch import nn

from ddpm_unet.utils.checkpoint import read_torch_file, some_names, weight_differences
from ddpm_unet.utils.errors import UserError
from ddpm_unet.utils.files import atomic_write

log = logging.getLogger(__name__)

INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"  # torch.hub's name too
INCEPTION_WEIGHTS_URL = (  # torch-fidelity's download address
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    + INCEPTION_WEIGHTS_FILENAME
)
INCEPTION_WEIGHTS_ENV = "DDPM_UNET_INCEPTION_WEIGHTS"  # used when the config names no file
# Resolving the host ends the check without network (socket timeouts do not cover DNS), and a
# stalled transfer ends at the socket timeout (`urllib` waits forever without one).
CONNECT_TIMEOUT_S = 10.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
PUBLISHED_FILE = (
    f"use the file torch-fidelity publishes, {INCEPTION_WEIGHTS_FILENAME} ({INCEPTION_WEIGHTS_URL})"
)
# BatchNorm step counters: absent from the published file (converted from TensorFlow), unused.
OPTIONAL_SUFFIX = ".num_batches_tracked"


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The InceptionV3 weights file is not available; the message says where to put it."""


class InceptionWeightsError(UserError):
    """A file given as the InceptionV3 weights is not a weights file (or was refused as code)."""


def default_weights_path() -> Path:
    """Where torch-fidelity/torchmetrics look for the weights: torch.hub's cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME


def weights_not_found(reason: str) -> InceptionWeightsNotFoundError:
    """The error: what is missing, why, and the three ways to provide it."""
    cache = default_weights_path()
    name = INCEPTION_WEIGHTS_FILENAME
    return InceptionWeightsNotFoundError(
        f"InceptionV3 weights file '{name}' not found: {reason}.\n"
        f"FID, KID and the Inception Score need the weights torch-fidelity uses (~95 MB). "
        f"Provide them in one of these ways:\n"
        f"  * put the file in the cache directory {cache.parent}/ (found automatically), or\n"
        f"  * set inception_weights=/path/to/{name}, or\n"
        f"  * set the environment variable {INCEPTION_WEIGHTS_ENV}=/path/to/{name}.\n"
        f"On a machine with internet access, download it from {INCEPTION_WEIGHTS_URL} "
        f"(or run torch-fidelity once there, which fills {cache.parent}/) and copy it over."
    )


def _check_reachable(url: str) -> None:
    """Raise `OSError` if the host of `url` cannot be resolved within `CONNECT_TIMEOUT_S` (in a
    daemon thread: `getaddrinfo` ignores socket timeouts)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            outcome.append(None)
        except BaseException as err:  # reported to the caller below
            outcome.append(err)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    if not outcome:
        raise OSError(f"resolving {host} took more than {CONNECT_TIMEOUT_S:.0f} s (no network?)")
    if outcome[0] is not None:
        raise OSError(f"cannot resolve {host}: {outcome[0]}") from outcome[0]


def download_weights(destination: Path, url: str = INCEPTION_WEIGHTS_URL) -> None:
    """Download `url` to `destination`, atomically, with a progress bar. The socket timeout is
    this request's own, not the process-wide default that other threads (W&B, ...) use.

    Raises:
        OSError: the host cannot be reached or the transfer stalls (timeouts above).
    """
    import urllib.request

    from tqdm.auto import tqdm

    _check_reachable(url)
    log.info("Downloading the Inception weights from %s to %s", url, destination)
    request = urllib.request.Request(url, headers={"User-Agent": "ddpm-unet"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_SOCKET_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None

        def copy(handle: IO[bytes]) -> None:
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    bar.update(len(block))

        atomic_write(destination, copy)


def resolve_inception_weights(
    inception_weights: str | os.PathLike[str] | None = None,
    download: bool = True,
    url: str = INCEPTION_WEIGHTS_URL,
) -> Path:
    """The path of a usable InceptionV3 weights file (checked by `load_inception_weights`), found
    as the module docstring says.

    Args:
        inception_weights: the file (None or "" when unset).
        download: fetch the file into torch.hub's cache when it is nowhere else.
        url: where to download from.

    Raises:
        InceptionWeightsNotFoundError: the file is missing and cannot be downloaded.
        InceptionWeightsError: the file found is not an InceptionV3 weights file.
    """
    env_value = os.environ.get(INCEPTION_WEIGHTS_ENV, "")
    env_source = f"the environment variable {INCEPTION_WEIGHTS_ENV}={env_value}"
    for value, source, missing in (
        (inception_weights, f"inception_weights={inception_weights}", "does not exist"),
        (env_value, env_source, "names a file that does not exist"),
    ):
        if value not in (None, ""):
            file = Path(os.fspath(value)).expanduser()
            if not file.is_file():
                raise weights_not_found(f"{source} {missing}")
            load_inception_weights(file, source)
            return file
    cached = default_weights_path()
    if cached.is_file():
        fix = f"delete it ({cached}) to download it again, or set inception_weights=/path/to/it"
        load_inception_weights(cached, f"the cached weights file {cached}", fix)
        return cached
    if not download:
        raise weights_not_found(f"it is not in the cache {cached} and downloading is disabled")
    try:
        download_weights(cached, url)
    except Exception as err:  # no network, proxy, HTTP error, disk: all mean "not available"
        failed = f"downloading it failed ({type(err).__name__}: {err})"
        raise weights_not_found(f"it is not in the cache {cached} and {failed}") from err
    try:
        load_inception_weights(cached, f"the file downloaded from {url} to {cached}")
    except InceptionWeightsError:
        # A proxy's error page or a changed release: not kept where it would be found next time.
        cached.unlink(missing_ok=True)
        raise
    return cached


def _build_extractor(features: list[str]) -> nn.Module:
    """torch-fidelity's `FeatureExtractorInceptionV3` as constructed, without its weight loading
    (on whatever device is current: `meta` gives the shapes at no cost)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
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
    path: str | os.PathLike[str], source: str | None = None, fix: str = PUBLISHED_FILE
) -> dict[str, torch.Tensor]:
    """The state dict `{name: tensor}` of InceptionV3 weights file `path`, read as data only
    (`read_torch_file`): float tensors with exactly the names and shapes of
    `expected_weight_shapes` (the `*.num_batches_tracked` counters may be absent).

    Args:
        source: how the user named the file (`inception_weights=/x.pth`), for messages.
        fix: what the message advises (never torch's advice to load with fewer restrictions).

    Raises:
        InceptionWeightsError: naming the file and saying what it is instead: unreadable, empty,
            refused (it holds Python objects: nothing of it was run), not a dict of tensors, or
            the weights of another network (which names/shapes differ).
    """
    name = source or f"the InceptionV3 weights file {os.fspath(path)}"
    state = read_torch_file(
        Path(path), name, "an InceptionV3 weights file", fix, InceptionWeightsError
    )

    def fail(problem: str) -> InceptionWeightsError:
        return InceptionWeightsError(f"{name} {problem}; {fix}.")

    if not isinstance(state, Mapping):
        raise fail(f"holds a {type(state).__name__}, not a state dict of InceptionV3 weights")
    not_tensors = [
        str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))
    ]
    if not_tensors:
        raise fail(
            f"is not a state dict of tensors: its entries {some_names(not_tensors)} are not "
            "tensors named by strings"
        )
    expected = expected_weight_shapes()
    parts = weight_differences(expected, state, "the file", "the network", OPTIONAL_SUFFIX)
    not_float = [
        f"{k} ({state[k].dtype})"
        for k in expected
        if k in state and not k.endswith(OPTIONAL_SUFFIX) and not state[k].is_floating_point()
    ]
    if not_float:
        parts.append(f"{len(not_float)} weights that are not floats ({some_names(not_float)})")
    if parts:
        raise fail(
            "holds the weights of another network, not those of torch-fidelity's InceptionV3 "
            f"(FeatureExtractorInceptionV3): {', '.join(parts)}"
        )
    return dict(state)


@contextmanager
def verified_weights_copy(
    path: str | os.PathLike[str], source: str | None = None
) -> Iterator[Path]:
    """A private copy of weights file `path`, written from the tensors `load_inception_weights`
    accepted, in a folder only this user can enter; deleted on exit. What torch-fidelity and
    torchmetrics get instead of the user's file."""
    state = load_inception_weights(path, source)
    with tempfile.TemporaryDirectory(prefix="ddpm-unet-inception-") as folder:  # mode 0700
        copy = Path(folder) / INCEPTION_WEIGHTS_FILENAME
        torch.save(state, copy)
        del state  # ~95 MB: the library loads its own copy
        yield copy


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()  # not `hashlib.file_digest`: Python 3.11+, and we support 3.10
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

    Same keys, shapes and format as the real file, so torch-fidelity and torchmetrics load it
    through their normal code paths. The convolutions get a He (fan-in, ReLU) initialisation and
    batch norm stays the identity, so activations keep their scale through the ~50 layers
    (PyTorch's default init shrinks them ~6x per layer, and the 2048-d features would be ~1e-20:
    every FID would be 0). For tests and benchmarks only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _build_extractor(["2048"])
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=module.in_features**-0.5)
                nn.init.zeros_(module.bias)
    torch.save(net.state_dict(), path)
    return path
