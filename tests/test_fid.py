"""FID with the real torch-fidelity and torchmetrics code, on a randomly initialised InceptionV3.

The weights file is made by `make_random_inception_weights` (real architecture, real file format,
seeded random values), so nothing is downloaded; `TORCH_HOME` points into a temporary folder so
the real torch.hub cache is neither read nor written. Feature layer 64 (the first Inception block)
keeps the tests fast: it runs the same code paths as the 2048-d layer (resize, network, statistics)
at a tenth of the cost.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch_fidelity
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm_unet.callbacks.fid import FIDCallback
from ddpm_unet.data import ImageDataModule
from ddpm_unet.metrics.fidelity import UInt8Images, fidelity_metrics
from ddpm_unet.metrics.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILENAME,
    InceptionWeightsError,
    InceptionWeightsNotFoundError,
    resolve_inception_weights,
)
from ddpm_unet.metrics.reference_stats import select_indices
from ddpm_unet.models.samplers import DDIM
from ddpm_unet.sample import load_model
from ddpm_unet.train import fit, run_config_of
from ddpm_unet.utils.instantiate import instantiate_callbacks
from tests.conftest import TINY_OVERRIDES, compose_train
from tests.fidelity_helpers import RGBUInt8, random_weights_file, uint8

N_IMAGES = 24  # per set: few images keep the CPU time low; the comparisons are exact anyway


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights_file(tmp_path_factory)


@pytest.fixture(autouse=True, scope="module")
def isolated_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No real torch.hub cache, no weights path from the environment."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        mp.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
        yield home


def torch_fidelity_fid_kid(
    fake: torch.Tensor, real: torch.Tensor, weights: Path, kid: bool = False
) -> dict[str, float]:
    """torch-fidelity's `calculate_metrics` on uint8 `[N, C, H, W]` sets, layer 64, no cache."""
    return torch_fidelity.calculate_metrics(
        input1=RGBUInt8(fake),
        input2=RGBUInt8(real),
        fid=True,
        kid=kid,
        feature_extractor_weights_path=str(weights),
        feature_layer_fid="64",
        feature_layer_kid="64",
        kid_subset_size=min(len(fake), len(real)),
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )


@pytest.fixture(scope="module")
def digits_uint8() -> torch.Tensor:
    """`N_IMAGES` digits from the train split as uint8 `[N, 1, 8, 8]`."""
    reference = ImageDataModule("digits", image_size=8, image_channels=1).reference_dataset("train")
    indices = select_indices(len(reference), N_IMAGES, seed=0)
    return uint8(torch.stack([reference[i] for i in indices]))


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_a_shift(
    inception_weights: Path, digits_uint8: torch.Tensor, tmp_path: Path
) -> None:
    real = UInt8Images(digits_uint8, channels_first=True)
    kwargs = dict(
        fid=True,
        kid=False,
        isc=False,
        feature_layer_fid="64",
        save_cpu_ram=True,
        reference_cache_name="digits-ref",  # the real features are extracted once
        cache_root=tmp_path,
    )
    fids = []
    for shift in (0, 8, 32, 96):
        shifted = (digits_uint8.int() + shift).clamp(0, 255).to(torch.uint8)
        fake = UInt8Images(shifted, channels_first=True)
        fids.append(fidelity_metrics(fake, real, inception_weights, **kwargs)["fid"])
    # The same images: equal statistics, FID 0 up to the matrix square root's rounding.
    assert abs(fids[0]) < 1e-4, fids
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert fids[-1] > 1.0, fids
    # The real side came from the cache after the first call.
    assert sorted(p.name for p in tmp_path.glob("digits-ref-*.npz"))


def test_missing_weights_give_a_clear_error_without_download(
    tmp_path: Path, isolated_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A config value that names no file.
    with pytest.raises(InceptionWeightsNotFoundError) as info:
        resolve_inception_weights(tmp_path / "nope.pth")
    message = str(info.value)
    for part in (
        INCEPTION_WEIGHTS_FILENAME,
        INCEPTION_WEIGHTS_ENV,
        "inception_weights=",
        str(isolated_torch_home / "hub" / "checkpoints"),
    ):
        assert part in message, (part, message)
    assert "nope.pth does not exist" in message

    # The environment variable names no file.
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(InceptionWeightsNotFoundError, match="environment variable"):
        resolve_inception_weights(None)
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV)

    # Nothing anywhere, downloads off.
    with pytest.raises(InceptionWeightsNotFoundError, match="downloading is disabled"):
        resolve_inception_weights(None, download=False)

    # Nothing anywhere, the download fails: it must fail fast (a refused connection here).
    start = time.perf_counter()
    with pytest.raises(InceptionWeightsNotFoundError, match="downloading it failed"):
        resolve_inception_weights(None, download=True, url="http://127.0.0.1:9/w.pth")
    assert time.perf_counter() - start < 15
    assert not (isolated_torch_home / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILENAME).exists()

    # The callback resolves the weights when it is built, i.e. before any training or sampling.
    # Under its own argument name (the entry point adds the group: `callbacks.fid: ...`).
    with pytest.raises(InceptionWeightsNotFoundError, match=r"\* set inception_weights="):
        FIDCallback(inception_weights=tmp_path / "nope.pth")


def test_a_downloaded_file_that_is_not_the_weights_is_refused_and_removed(
    isolated_torch_home: Path,
) -> None:
    """What a proxy's error page or a moved release would give: served over local HTTP."""
    page = b"<html><body>Access denied by proxy</body></html>\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{INCEPTION_WEIGHTS_FILENAME}"
    try:
        with pytest.raises(InceptionWeightsError) as info:
            resolve_inception_weights(None, download=True, url=url)
    finally:
        server.shutdown()
    message = str(info.value)
    cached = isolated_torch_home / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILENAME
    assert f"the file downloaded from {url} to {cached} is not an InceptionV3" in message
    assert "a text file (starting '<html><body>Access denied" in message
    assert not cached.exists()  # not found again next time


def test_weights_resolution_order(
    inception_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Links to one valid file: the resolver checks what it finds (tests/test_safe_loading.py).
    config_file, env_file = tmp_path / "a.pth", tmp_path / "b.pth"
    config_file.symlink_to(inception_weights)
    env_file.symlink_to(inception_weights)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(env_file))
    assert resolve_inception_weights(config_file) == config_file
    assert resolve_inception_weights(None) == env_file
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.symlink_to(inception_weights)
    try:
        assert resolve_inception_weights(None, download=False) == cached
    finally:
        cached.unlink()


def fid_overrides(weights: Path) -> list[str]:
    return [
        *TINY_OVERRIDES,
        "callbacks=fid",
        "callbacks.sample_grid=null",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
        "++trainer.num_sanity_val_steps=0",
        "callbacks.fid.every_n_epochs=1",
        f"callbacks.fid.num_samples={N_IMAGES}",
        f"callbacks.fid.num_real={N_IMAGES}",
        "callbacks.fid.sampler.steps=3",
        "callbacks.fid.batch_size=16",
        "callbacks.fid.feature=64",
        "callbacks.fid.inception_batch_size=32",
        "callbacks.fid.compute_kid=true",
        f"callbacks.fid.kid_subset_size={N_IMAGES}",  # all images: KID without random subsets
        f"callbacks.fid.inception_weights={weights}",
        "callbacks.fid.download=false",
    ]


def regenerate(ckpt: Path, steps: int = 3, batch_size: int = 7) -> torch.Tensor:
    """The callback's fake images (seed 0, images 0..N-1 whatever the ranks that made them),
    from the checkpoint, in one process and another batch size, as uint8."""
    model = load_model(ckpt, "cpu")  # as sample.py reads it (weights_only=True)
    return uint8(model.sample_images(N_IMAGES, DDIM(steps=steps), seed=0, batch_size=batch_size))


def real_subset(data_cfg: DictConfig, split: str = "val") -> torch.Tensor:
    reference = instantiate(data_cfg).reference_dataset(split)
    return uint8(torch.stack([reference[i] for i in select_indices(len(reference), N_IMAGES)]))


@pytest.mark.slow
def test_fid_callback_in_fit_equals_torch_fidelity_and_stays_out_of_checkpoints(
    inception_weights: Path, tmp_path: Path
) -> None:
    cfg = compose_train(fid_overrides(inception_weights), tmp_path)
    metrics = fit(cfg)
    assert "val/fid" in metrics and "val/kid" in metrics, metrics

    best = tmp_path / "checkpoints" / "best_fid_0000.ckpt"
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert best.is_file(), sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    for path in (best, last):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert not [k for k in ckpt["state_dict"] if "incep" in k.lower()]
        assert "inception" not in repr(ckpt.get("callbacks", {})).lower()
        # The tiny model (+ EMA + Adam) is ~2 MB; with the Inception net it would be > 95 MB.
        assert path.stat().st_size < 10e6, path.stat().st_size
    assert ckpt["callbacks"]  # ModelCheckpoint states are there: the check above looked inside

    # The same images through torch-fidelity.
    fake = regenerate(best)
    real = real_subset(cfg.data)
    expected = torch_fidelity_fid_kid(fake, real, inception_weights, kid=True)
    # float32 logging vs float64: agreement to ~1e-7 relative; 1e-5 leaves room for BLAS.
    assert metrics["val/fid"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-5)
    assert metrics["val/kid"] == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-5)
    assert expected["frechet_inception_distance"] > 0.01  # not trivially equal


def test_fid_metric_state_is_reset_at_fit_start(inception_weights: Path) -> None:
    """Stale states (a previous fit, or tensors made before ddp_spawn shared them between the
    processes) must not leak into the next fit's FID: `on_fit_start` starts from empty ones."""
    callback = FIDCallback(feature=64, inception_weights=inception_weights, compute_kid=True)
    callback.reset()
    stale = callback.fid.real_features_sum
    callback.fid.update(torch.randn(50, 64), real=True)
    callback.kid.update(torch.randn(50, 64), real=False)
    callback._real_done = True
    module = SimpleNamespace(device=torch.device("cpu"))
    callback.on_fit_start(None, module)  # type: ignore[arg-type]
    assert int(callback.fid.real_features_num_samples) == 0
    assert int(callback.fid.fake_features_num_samples) == 0
    assert callback.kid.fake_features == [] and not callback._real_done
    assert callback.fid.real_features_sum.data_ptr() != stale.data_ptr()  # new tensors


@pytest.mark.slow
def test_fid_under_ddp_spawn_equals_torch_fidelity_on_all_ranks_images(
    inception_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two CPU processes (`trainer=ddp_sim`): each rank samples its half of the images (`rank::2`
    of one run) and takes half of the real images; the synced FID is that of all of them, and
    equals torch-fidelity's on the same run's images made in one process. The metric states are
    created in the parent before the fit, as they would be by any callback that builds its metric
    up front: ddp_spawn moves them into shared memory, and only the reset at fit start keeps the
    ranks from adding into one tensor."""
    overrides = [
        *fid_overrides(inception_weights),
        "trainer=ddp_sim",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        "callbacks.lr_monitor=null",  # built with logger=False below: nothing to log lr to
    ]
    # One thread per spawned process (Lightning's choice for 2 processes on 2 cores, pinned here
    # whatever the machine). The images do not depend on it (`ddpm_unet.generation`), but the
    # Inception features' rounding does, slightly.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = compose_train(overrides, tmp_path)
    callbacks = instantiate_callbacks(cfg.callbacks)
    fid_cb = next(c for c in callbacks if isinstance(c, FIDCallback))
    fid_cb.reset()  # states exist in the parent before the processes are spawned ...
    fid_cb.fid.update(torch.randn(8, 64), real=True)  # ... and are not even empty
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    model = instantiate(cfg.model)
    model.run_config = run_config_of(cfg)  # as fit() does: checkpoints rebuild their model
    trainer.fit(model, datamodule=instantiate(cfg.data))
    value = float(trainer.callback_metrics["val/fid"])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fake = regenerate(tmp_path / "checkpoints" / "best_fid_0000.ckpt")
        expected = torch_fidelity_fid_kid(fake, real_subset(cfg.data), inception_weights)
    finally:
        torch.set_num_threads(threads)
    # Tight: shared states double-count the statistics, which moves FID by ~2e-4 relative here.
    assert value == pytest.approx(expected["frechet_inception_distance"], rel=1e-5)


def test_cpu_inception_runs_channels_last_on_every_core(
    inception_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `fidelity_metrics` runs torch-fidelity's InceptionV3 with on a CPU: NHWC weights
    (~1.5x faster there) and a thread per available core unless OMP_NUM_THREADS says otherwise;
    both undone afterwards."""
    from torch_fidelity.utils import create_feature_extractor

    from ddpm_unet.metrics import fidelity

    cpu = torch.device("cpu")
    before = torch.get_num_threads()
    with fidelity.channels_last_inception(cpu):
        net = create_feature_extractor(
            "inception-v3-compat",
            ["64"],
            cuda=False,
            feature_extractor_weights_path=str(inception_weights),
        )
    weight = net.Conv2d_1a_3x3.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    plain = create_feature_extractor(
        "inception-v3-compat",
        ["64"],
        cuda=False,
        feature_extractor_weights_path=str(inception_weights),
    )
    assert plain.Conv2d_1a_3x3.conv.weight.is_contiguous()  # the registry is restored
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(net(images)[0], plain(images)[0], rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(fidelity, "USER_THREADS", None)
    with fidelity.cpu_threads(cpu) as threads:
        assert threads == torch.get_num_threads() == fidelity.available_cores()
    monkeypatch.setattr(fidelity, "USER_THREADS", "1")
    with fidelity.cpu_threads(cpu) as threads:
        assert threads == before
    assert torch.get_num_threads() == before
