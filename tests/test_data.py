"""The data pipeline: every real loader on small files written in the dataset's own on-disk format,
the split, the global batch size, the offline errors and the Hydra configs.

Nothing here touches the network: downloads are either not reached (files present) or made to
fail on purpose.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import re
import socket
import struct
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import SequentialSampler
from torchvision import datasets as tv_datasets

from ddpm_unet.data.datamodule import (
    ImageDataModule,
    ResumableRandomSampler,
    per_device_batch_size,
)
from ddpm_unet.data.datasets import (
    DatasetDownloadError,
    DatasetNotFoundError,
    ImageDataset,
    PrecomputedImages,
    build_transform,
)
from ddpm_unet.data.folder import CorruptImagesError, ImageFolderDataset, find_image_files
from ddpm_unet.utils.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _batch(loader: torch.utils.data.DataLoader) -> torch.Tensor:
    return next(iter(loader))


def _assert_images(x: torch.Tensor, channels: int, size: int) -> None:
    assert isinstance(x, torch.Tensor) and not isinstance(x, tuple | list)
    assert x.dtype == torch.float32
    assert x.shape[-3:] == (channels, size, size)
    assert x.min() >= -1.0 and x.max() <= 1.0


# --------------------------------------------------------------------------------------------
# writers of the real on-disk formats
# --------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """IDX ("SN3 Pascal Vincent") file: magic 0x0000 08 <ndim> (8 = ubyte), big-endian dims."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _mnist_images(n: int, offset: int) -> np.ndarray:
    """`n` distinct 28x28 images: a ramp, so pixel values are known exactly."""
    base = np.arange(28 * 28, dtype=np.int64).reshape(28, 28) % 256
    return np.stack([(base + offset + 7 * i) % 256 for i in range(n)]).astype(np.uint8)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 12, n_test: int = 5) -> dict:
    """The four gunzipped IDX files torchvision's `_check_exists` looks for in <folder>/raw/
    (the .gz archives too, as a real download leaves them; the class reads the plain files)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": _mnist_images(n_train, 0),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": _mnist_images(n_test, 100),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        _write_idx(raw / name, array)
        _write_idx(raw / f"{name}.gz", array, gz=True)
    return arrays


def write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> dict[str, str]:
    """cifar-10-batches-py/: five training pickles, test_batch, batches.meta, in the format of
    the real archive (dict with 'data' [N, 3072] uint8 row-major R,G,B planes, 'labels', ...).
    Returns the md5 of each file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int, label: str) -> dict:
        return {
            "batch_label": label,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
            "filenames": [f"img_{label}_{i}.png" for i in range(n)],
        }

    contents = {
        f"data_batch_{i}": batch(per_batch, f"training batch {i} of 5") for i in range(1, 6)
    }
    contents["test_batch"] = batch(n_test, "testing batch 1 of 1")
    contents["batches.meta"] = {
        "label_names": ["airplane", "automobile", "bird", "cat", "deer"]
        + ["dog", "frog", "horse", "ship", "truck"],
        "num_cases_per_batch": per_batch,
        "num_vis": 3072,
    }
    for name, content in contents.items():
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return {name: _md5(folder / name) for name in contents}


def use_cifar10_checksums(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    """Swap the real CIFAR-10 md5s (of the real 170 MB files) for those of our small files.

    Unavoidable: no small file has the real checksums. Only the expected values change; the real
    `check_integrity` still hashes every file, so a wrong or damaged file still fails.
    """
    cls = tv_datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, md5s[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5s[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})


# The header line of list_attr_celeba.txt: the 40 attribute names of the real release.
CELEBA_ATTR_HEADER = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
)


def write_celeba(root: Path, partitions: tuple[int, ...] = (0, 0, 0, 0, 1, 1, 2)) -> Path:
    """celeba/ as the real release lays it out: img_align_celeba/NNNNNN.jpg (178 wide, 218 high)
    and the five space-separated annotation files torchvision reads. Returns the folder."""
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partitions))]
    rng = np.random.default_rng(1)
    for name in names:
        pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name, quality=90)
    n = len(names)
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, partitions))
    )
    (folder / "identity_CelebA.txt").write_text(
        "".join(f"{name} {100 + i}\n" for i, name in enumerate(names))
    )
    (folder / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n"
        + "".join(f"{name}    95  71 226 313\n" for name in names)
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y\n"
        + "".join(f"{name} 69 109 106 113 77 142 73 152 108 154\n" for name in names)
    )
    (folder / "list_attr_celeba.txt").write_text(
        f"{n}\n{CELEBA_ATTR_HEADER}\n"
        + "".join(f"{name} {' '.join(['-1', ' 1'] * 20)}\n" for name in names)
    )
    return folder


def use_celeba_checksums(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """As for CIFAR-10: the real md5s are of the real annotation files, so we put in ours; the
    real `check_integrity` still runs on every file."""
    cls = tv_datasets.CelebA
    patched = [
        (fid, md5 if name.endswith(".zip") else _md5(folder / name), name)
        for fid, md5, name in cls.file_list
    ]
    monkeypatch.setattr(cls, "file_list", patched)


def write_image_folder(root: Path) -> dict[str, list[Path]]:
    """A nested folder of PNG/JPEG images of several modes and shapes, two corrupt files and a
    non-image file."""
    (root / "a" / "b").mkdir(parents=True)
    good = [
        root / "wide.png",
        root / "a" / "tall.JPG",
        root / "a" / "grey.png",
        root / "a" / "b" / "rgba.png",
        root / "a" / "b" / "palette.png",
        root / "a" / "b" / "photo.jpeg",
    ]
    Image.new("RGB", (40, 20), (255, 0, 0)).save(good[0])
    Image.new("RGB", (12, 30), (0, 255, 0)).save(good[1], format="JPEG")
    Image.new("L", (16, 16), 200).save(good[2])
    Image.new("RGBA", (16, 16), (0, 0, 255, 128)).save(good[3])
    Image.new("P", (16, 16), 3).save(good[4])
    Image.new("RGB", (24, 24), (10, 20, 30)).save(good[5], format="JPEG")
    bad = [root / "a" / "broken.png", root / "not_really.jpg"]
    bad[0].write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # PNG signature, then nonsense
    bad[1].write_bytes(b"this is a text file with a .jpg name")
    (root / "a" / "notes.txt").write_text("ignored: not an image extension")
    return {"good": good, "bad": bad}


# --------------------------------------------------------------------------------------------
# digits (built in, offline)
# --------------------------------------------------------------------------------------------


def test_digits_batches_are_images_in_range_with_the_configured_shape() -> None:
    dm = ImageDataModule("digits", image_size=8, image_channels=1, batch_size=64, val_fraction=0.1)
    dm.setup("fit")
    x = _batch(dm.train_dataloader())
    _assert_images(x, channels=1, size=8)
    assert x.shape[0] == 64
    # digits span 0..16, so the scaled images reach both ends of [-1, 1]
    assert x.min() == -1.0 and x.max() == 1.0
    assert len(dm.train_dataset) + len(dm.val_dataset) == 1797
    assert len(dm.val_dataset) == round(1797 * 0.1)


def test_digits_with_labels_yield_their_targets_and_stay_fast() -> None:
    from sklearn.datasets import load_digits

    dm = ImageDataModule("digits", image_size=8, image_channels=1, batch_size=32, with_labels=True)
    dm.setup("fit")
    assert dm.class_names == [str(d) for d in range(10)] and dm.num_classes == 10
    assert isinstance(dm.train_dataset, PrecomputedImages)  # still transformed once
    images, labels = _batch(dm.train_dataloader())
    _assert_images(images, channels=1, size=8)
    assert labels.dtype == torch.int64 and labels.shape == (32,)
    targets = torch.from_numpy(load_digits().target)
    index = dm.val_dataset.indices[5]
    image, label = dm.val_dataset[5]
    assert int(label) == targets[index]
    torch.testing.assert_close(image, dm.reference_dataset("val")[5])  # reference: images only


def test_digits_pixel_values_map_0_16_onto_minus1_1() -> None:
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float()  # [1797, 8, 8], 0..16
    dm = ImageDataModule("digits", image_size=8, image_channels=1)
    dm.setup()
    index = dm.val_dataset.indices[3]
    expected = raw[index] / 16 * 2 - 1
    torch.testing.assert_close(dm.val_dataset[3], expected.unsqueeze(0))


def test_digits_are_transformed_once_into_the_same_tensors() -> None:
    """The digits are precomputed (one tensor), equal to the per-item transform pipeline."""
    dm = ImageDataModule("digits", image_size=16, image_channels=3)
    dm.setup()
    assert isinstance(dm.train_dataset, PrecomputedImages)
    assert dm.train_dataset.images.shape == (len(dm.train_dataset.indices), 3, 16, 16)
    per_item = ImageDataset(
        dm.train_dataset.source, dm.train_dataset.indices, build_transform(16, 3, False)
    )
    for i in (0, 7, len(per_item) - 1):
        torch.testing.assert_close(dm.train_dataset[i], per_item[i])


def test_digits_resized_and_converted_to_rgb() -> None:
    dm = ImageDataModule("digits", image_size=16, image_channels=3, batch_size=8)
    dm.setup()
    x = _batch(dm.val_dataloader())
    _assert_images(x, channels=3, size=16)
    torch.testing.assert_close(x[:, 0], x[:, 1])  # grey source: R = G = B
    torch.testing.assert_close(x[:, 1], x[:, 2])


def test_seeded_split_is_deterministic_disjoint_and_seed_dependent() -> None:
    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = ImageDataModule("digits", image_size=8, image_channels=1, val_fraction=0.2, seed=seed)
        dm.setup()
        return dm.train_dataset.indices, dm.val_dataset.indices

    train_a, val_a = split(0)
    train_b, val_b = split(0)
    train_c, val_c = split(1)
    assert (train_a, val_a) == (train_b, val_b)
    assert val_a != val_c
    assert not set(train_a) & set(val_a)
    assert sorted(train_a + val_a) == list(range(1797))
    assert len(val_a) == round(1797 * 0.2)


def test_flip_only_on_train_and_never_on_reference_images() -> None:
    dm = ImageDataModule("digits", image_size=8, image_channels=1, random_flip=True)
    dm.setup()
    source = dm.train_dataset.source.tensors[0]  # [1797, 1, 8, 8] in [0, 1]
    index = dm.train_dataset.indices[0]
    original = source[index] * 2 - 1
    flipped = original.flip(-1)
    assert not torch.equal(original, flipped)  # the digit is not mirror-symmetric
    torch.manual_seed(0)
    draws = [dm.train_dataset[0] for _ in range(40)]
    assert any(torch.equal(d, flipped) for d in draws)
    assert any(torch.equal(d, original) for d in draws)
    assert all(torch.equal(d, original) or torch.equal(d, flipped) for d in draws)

    reference = dm.reference_dataset("train")
    assert reference.indices == dm.train_dataset.indices
    assert all(torch.equal(reference[0], original) for _ in range(20))
    val_index = dm.val_dataset.indices[0]
    assert all(torch.equal(dm.val_dataset[0], source[val_index] * 2 - 1) for _ in range(20))
    with pytest.raises(ValueError, match="split='test'"):
        dm.reference_dataset("test")


# --------------------------------------------------------------------------------------------
# batch size and loader settings
# --------------------------------------------------------------------------------------------


def test_per_device_batch_size_divides_or_explains() -> None:
    assert per_device_batch_size(128, 1) == 128
    assert per_device_batch_size(128, 4) == 32
    with pytest.raises(ValueError, match=r"batch_size=130.*world size 4.*multiple of 4"):
        per_device_batch_size(130, 4)


def test_setup_divides_global_batch_by_trainer_world_size() -> None:
    dm = ImageDataModule("digits", image_size=8, image_channels=1, batch_size=128)
    dm.trainer = SimpleNamespace(world_size=4)  # what setup() reads from a real Trainer
    dm.setup("fit")
    assert dm.batch_size_per_device == 32
    assert dm.train_dataloader().batch_size == 32
    assert dm.val_dataloader().batch_size == 32

    dm = ImageDataModule("digits", image_size=8, image_channels=1, batch_size=128)
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ValueError, match=r"batch_size=128.*world size 3"):
        dm.setup("fit")


def test_loader_settings() -> None:
    dm = ImageDataModule("digits", image_size=8, image_channels=1, batch_size=32, num_workers=2)
    dm.setup()
    train, val = dm.train_dataloader(), dm.val_dataloader()  # not iterated: no worker starts
    # shuffled, in an order that depends only on (seed, epoch): resumable mid-epoch
    assert isinstance(train.sampler, ResumableRandomSampler) and train.drop_last
    order = list(train.sampler)
    assert sorted(order) == list(range(len(order))) and order != sorted(order)
    assert isinstance(val.sampler, SequentialSampler) and not val.drop_last
    assert train.persistent_workers and train.num_workers == 2
    assert not ImageDataModule("digits").train_dataloader().persistent_workers

    # a global batch larger than the training set: keep the partial batch instead of none
    dm = ImageDataModule("digits", image_size=8, image_channels=1, batch_size=4096)
    dm.setup()
    loader = dm.train_dataloader()
    assert not loader.drop_last and len(loader) == 1


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(dataset="imagenet"), r"dataset='imagenet'.*digits, mnist, .*folder"),
        (dict(image_channels=2), r"image_channels=2.*1 .*or 3"),
        (dict(image_size=0), r"^image_size=0 must be a whole number >= 1"),
        (dict(val_fraction=0.0), r"val_fraction=0.0.*between 0 and 1"),
        (dict(val_fraction=1.0), r"val_fraction=1.0.*between 0 and 1"),
        (dict(batch_size=0), r"batch_size=0"),
        (dict(num_workers=-1), r"num_workers=-1"),
        (dict(max_bad_files=-1), r"max_bad_files=-1"),
        (dict(dataset="celeba", with_labels=True), r"^with_labels=True, but dataset='celeba' has"),
    ],
)
def test_bad_constructor_arguments_raise_value_error(kwargs: dict, pattern: str) -> None:
    kwargs = {"dataset": "digits", **kwargs}
    with pytest.raises(ValueError, match=pattern):
        ImageDataModule(**kwargs)


# --------------------------------------------------------------------------------------------
# torchvision datasets on files in their real formats
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_family_reads_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    arrays = write_mnist(tmp_path, folder)
    dm = ImageDataModule(
        name, root=tmp_path, image_size=28, image_channels=1, batch_size=4, download=False
    )
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_dataset) == 12 and len(dm.val_dataset) == 5  # val = official test split
    # native size: exactly the stored bytes, scaled to [-1, 1]
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"][2]).float() / 255 * 2 - 1
    torch.testing.assert_close(dm.val_dataset[2], expected.unsqueeze(0))
    x = _batch(dm.train_dataloader())
    _assert_images(x, channels=1, size=28)
    assert x.shape[0] == 4
    assert dm.class_names is None and dm.num_classes is None

    labelled = ImageDataModule(
        name, root=tmp_path, image_size=28, image_channels=1, with_labels=True
    )
    labelled.setup()
    cls = tv_datasets.MNIST if name == "mnist" else tv_datasets.FashionMNIST
    assert labelled.class_names == cls.classes
    assert labelled.num_classes == 10
    image, label = labelled.val_dataset[3]
    torch.testing.assert_close(image, dm.val_dataset[3])
    assert label == arrays["t10k-labels-idx1-ubyte"][3]


def test_mnist_resized_to_32_and_rgb(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    dm = ImageDataModule(
        "mnist", root=tmp_path, image_size=32, image_channels=3, batch_size=4, download=False
    )
    dm.setup()
    x = _batch(dm.val_dataloader())
    _assert_images(x, channels=3, size=32)
    torch.testing.assert_close(x[:, 0], x[:, 2])


def test_cifar10_reads_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5s = write_cifar10(tmp_path, per_batch=3, n_test=4)
    use_cifar10_checksums(monkeypatch, md5s)
    dm = ImageDataModule(
        "cifar10",
        root=tmp_path,
        image_size=32,
        image_channels=3,
        batch_size=5,
        random_flip=True,
        download=False,
    )
    dm.prepare_data()
    dm.setup()
    assert len(dm.train_dataset) == 15 and len(dm.val_dataset) == 4
    x = _batch(dm.train_dataloader())
    _assert_images(x, channels=3, size=32)
    assert x.shape[0] == 5
    # val image 1 equals the pickled bytes (planes R, G, B of 32x32), scaled to [-1, 1]
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        row = pickle.load(f)["data"][1]
    expected = torch.from_numpy(row.reshape(3, 32, 32)).float() / 255 * 2 - 1
    torch.testing.assert_close(dm.val_dataset[1], expected)

    labelled = ImageDataModule("cifar10", root=tmp_path, with_labels=True, download=False)
    labelled.setup()
    assert labelled.class_names == ["airplane", "automobile", "bird", "cat", "deer"] + [
        "dog", "frog", "horse", "ship", "truck"
    ]  # fmt: skip
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        assert labelled.train_dataset[2][1] == pickle.load(f)["labels"][2]

    grey = ImageDataModule(
        "cifar10", root=tmp_path, image_size=16, image_channels=1, download=False
    )
    grey.setup()
    _assert_images(grey.val_dataset[0], channels=1, size=16)


def test_cifar10_damaged_file_fails_its_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_cifar10_checksums(monkeypatch, write_cifar10(tmp_path))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])  # truncated
    dm = ImageDataModule("cifar10", root=tmp_path, download=False)
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_3  \[checksum mismatch"):
        dm.prepare_data()


def test_celeba_reads_partition_and_centre_crops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_celeba(tmp_path, partitions=(0, 0, 0, 0, 1, 1, 2))
    use_celeba_checksums(monkeypatch, folder)
    dm = ImageDataModule(
        "celeba",
        root=tmp_path,
        image_size=64,
        image_channels=3,
        batch_size=2,
        random_flip=True,
        download=False,
    )
    dm.prepare_data()
    dm.setup()
    # train = partition 0, val = partition 1 ("valid"), partition 2 unused
    assert len(dm.train_dataset) == 4 and len(dm.val_dataset) == 2
    x = _batch(dm.train_dataloader())
    _assert_images(x, channels=3, size=64)  # 178x218 resized and centre cropped to a square
    assert x.shape[0] == 2
    _assert_images(dm.reference_dataset("val")[1], channels=3, size=64)


def test_celeba_without_annotation_files_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_celeba(tmp_path)
    use_celeba_checksums(monkeypatch, folder)
    (folder / "list_attr_celeba.txt").unlink()
    dm = ImageDataModule("celeba", root=tmp_path, download=False)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert re.search(r"list_attr_celeba\.txt  \[missing\]", message)
    assert re.search(r"list_eval_partition\.txt  \[ok\]", message)
    assert "img_align_celeba.zip" in message and "download=True" in message


# --------------------------------------------------------------------------------------------
# missing data and failed downloads
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected_path"),
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("celeba", "celeba/list_eval_partition.txt"),
    ],
)
def test_missing_dataset_without_download_names_the_path(
    tmp_path: Path, name: str, expected_path: str
) -> None:
    dm = ImageDataModule(name, root=tmp_path / "nowhere", download=False)
    for hook in (dm.prepare_data, dm.setup):  # both fail early, before any training step
        with pytest.raises(DatasetNotFoundError) as info:
            hook()
        message = str(info.value)
        assert repr(name) in message
        assert str(tmp_path / "nowhere" / expected_path) in message
        assert "[missing]" in message and "download=True" in message
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "nowhere").exists()  # nothing created, nothing downloaded


@pytest.mark.timeout(60)
def test_failed_mnist_download_through_torchvision_gives_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No network: the real torchvision download code runs, and its first URL open fails."""
    opened: list[tuple[str, float | None]] = []

    def no_network(request: urllib.request.Request | str, *args: object, **kwargs: object):
        # Recorded, not asserted here: an AssertionError would be wrapped like any failure.
        opened.append((getattr(request, "full_url", request), socket.getdefaulttimeout()))
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    dm = ImageDataModule("mnist", root=tmp_path, download=True)
    with pytest.raises(DatasetDownloadError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "downloading it failed" in message and "no network access" in message
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message
    # a download really was attempted, through every mirror, without touching the process-wide
    # socket timeout (other threads, e.g. a logger's, keep theirs)
    assert {url.split("/mnist/")[0] for url, _ in opened} == {
        "https://ossci-datasets.s3.amazonaws.com",
        "http://yann.lecun.com/exdb",
    }
    assert all(timeout is None for _, timeout in opened)


@pytest.mark.timeout(60)
def test_failed_cifar10_download_gives_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(tv_datasets.cifar, "download_and_extract_archive", refuse)
    dm = ImageDataModule("cifar10", root=tmp_path, download=True)
    with pytest.raises(DatasetDownloadError, match="Network is unreachable") as info:
        dm.setup()  # without a trainer, setup() runs prepare_data() itself
    assert isinstance(info.value.__cause__, OSError)
    assert "cifar-10-python.tar.gz" in str(info.value)


@pytest.mark.timeout(60)
def test_failed_celeba_download_gives_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Too many users have viewed or downloaded this file recently.")

    monkeypatch.setattr(tv_datasets.celeba, "download_file_from_google_drive", refuse)
    dm = ImageDataModule("celeba", root=tmp_path, download=True)
    with pytest.raises(DatasetDownloadError, match="Too many users") as info:
        dm.prepare_data()
    assert str(tmp_path / "celeba" / "img_align_celeba") in str(info.value)


def test_present_files_are_never_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist(tmp_path)
    use_cifar10_checksums(monkeypatch, write_cifar10(tmp_path))

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted although the files are present")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    monkeypatch.setattr(tv_datasets.mnist, "download_and_extract_archive", forbidden)
    monkeypatch.setattr(tv_datasets.cifar, "download_and_extract_archive", forbidden)
    for name in ("mnist", "cifar10"):
        dm = ImageDataModule(name, root=tmp_path, download=True)
        dm.prepare_data()
        dm.setup()
        assert len(dm.train_dataset) > 0


# --------------------------------------------------------------------------------------------
# folder datasets
# --------------------------------------------------------------------------------------------


def test_folder_skips_corrupt_files_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = write_image_folder(tmp_path / "imgs")
    dm = ImageDataModule(
        "folder",
        root=tmp_path / "imgs",
        image_size=16,
        image_channels=3,
        batch_size=2,
        val_fraction=0.34,
        seed=0,
    )
    with caplog.at_level(logging.WARNING, logger="ddpm_unet.data"):
        dm.setup()
    source = dm.train_dataset.source
    assert sorted(source.files) == sorted(files["good"])  # recursive, .JPG too, .txt ignored
    assert sorted(source.bad_files) == sorted(files["bad"])
    assert "Skipping 2 of 8 files" in caplog.text and "broken.png" in caplog.text
    assert len(dm.val_dataset) == 2 and len(dm.train_dataset) == 4
    for i in range(len(dm.train_dataset)):  # L, RGBA, P, non-square: all become [3, 16, 16]
        _assert_images(dm.train_dataset[i], channels=3, size=16)
    _assert_images(_batch(dm.train_dataloader()), channels=3, size=16)

    # the wide red PNG: centre crop of a uniform image is still pure red
    red = ImageDataModule("folder", root=tmp_path / "imgs", image_size=8, image_channels=3)
    red.setup()
    image = red.reference_dataset("train").transform(source[source.files.index(files["good"][0])])
    torch.testing.assert_close(image[0], torch.ones(8, 8))
    torch.testing.assert_close(image[1], -torch.ones(8, 8))


def test_folder_classes_are_the_sorted_sub_folders(tmp_path: Path) -> None:
    for name, n in (("zebra", 2), ("ant", 3), ("cat", 1)):
        (tmp_path / name / "deep").mkdir(parents=True)
        for i in range(n):  # some one level deeper: the top-level folder is the class
            where = tmp_path / name / ("deep" if i else "")
            Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(where / f"{name}{i}.png")
    dm = ImageDataModule("folder", root=tmp_path, image_size=4, batch_size=6, with_labels=True)
    dm.setup()
    assert dm.class_names == ["ant", "cat", "zebra"] and dm.num_classes == 3
    source = dm.train_dataset.source
    for i, path in enumerate(source.files):
        assert source[i][1] == dm.class_names.index(path.relative_to(tmp_path).parts[0])
    images, labels = next(iter(dm.val_dataloader()))
    assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)

    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(UserError, match=r"with_labels=True .* lie directly in it, e.g. .*loose"):
        ImageFolderDataset(tmp_path, with_labels=True)
    assert len(ImageFolderDataset(tmp_path)) == 7  # without labels any layout is fine


def test_folder_16_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 128 * 257], [65535, 255]], dtype=np.uint16)  # 255: dark in 16 bits
    Image.fromarray(values).save(tmp_path / "depth.png")  # mode I;16
    source = ImageFolderDataset(tmp_path)
    image = build_transform(image_size=2, image_channels=1, random_flip=False)(source[0])
    expected = torch.tensor([[0.0, 128 / 255], [1.0, 1 / 255]]) * 2 - 1
    # one 8-bit level (2/255 in [-1, 1]) of rounding when converting 16 -> 8 bits
    torch.testing.assert_close(image, expected.unsqueeze(0), atol=2 / 255, rtol=0)


def test_folder_too_many_corrupt_files_names_them(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    dm = ImageDataModule("folder", root=tmp_path, max_bad_files=1)
    with pytest.raises(CorruptImagesError, match=r"(?s)2 of 8 files.*max_bad_files=1") as info:
        dm.setup()
    assert "broken.png" in str(info.value) and "not_really.jpg" in str(info.value)
    ImageDataModule("folder", root=tmp_path, max_bad_files=2).setup()  # at the limit: fine


def test_folder_of_only_corrupt_files_fails(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(CorruptImagesError, match=r"None of the 1 image files.*\n.*x\.png"):
        ImageDataModule("folder", root=tmp_path).setup()


def test_folder_truncated_files_are_skipped_at_setup_not_met_by_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PIL's `verify()` decodes no pixels, so it passes a truncated JPEG; set-up decodes every
    file, so a cut-off file is skipped there instead of killing a DataLoader worker mid-epoch."""
    rng = np.random.default_rng(0)
    for i in range(6):  # noise: large files with entropy-coded data to cut into
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.jpg", quality=95)
    whole = (tmp_path / "0.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole[: len(whole) // 2])
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes((tmp_path / "p.png").read_bytes()[:-200])
    (tmp_path / "p.png").unlink()
    with Image.open(truncated) as image:
        image.verify()  # the old check: no complaint

    dm = ImageDataModule(
        "folder", root=tmp_path, image_size=16, batch_size=2, num_workers=2, val_fraction=0.2
    )
    with caplog.at_level(logging.WARNING, logger="ddpm_unet.data"):
        dm.setup()
    assert sorted(dm.train_dataset.source.bad_files) == [cut_png, truncated]
    assert "Skipping 2 of 8 files" in caplog.text and "truncated.jpg" in caplog.text
    batches = list(dm.train_dataloader())  # a whole epoch through two worker processes
    assert len(batches) == 2  # 5 training images, batches of 2, the partial one dropped
    for batch in batches:
        _assert_images(batch, channels=3, size=16)
    with pytest.raises(CorruptImagesError, match=r"(?s)max_bad_files=0.*truncated\.jpg"):
        ImageDataModule("folder", root=tmp_path, max_bad_files=0).setup()

    # A file cut after set-up is named when it is loaded.
    source = dm.train_dataset.source
    victim = source.files[0]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(CorruptImagesError, match=re.escape(f"{victim} was readable at set-up")):
        source[0]


def test_folder_missing_or_empty_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(missing))):
        ImageDataModule("folder", root=missing).prepare_data()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(DatasetNotFoundError, match=r"No image file .*" + re.escape(str(empty))):
        ImageDataModule("folder", root=empty).setup()


def test_folder_split_is_the_same_on_every_listing(tmp_path: Path) -> None:
    for i in range(20):
        Image.new("L", (8, 8), i * 10).save(tmp_path / f"{i:02d}.png")
    splits = []
    for _ in range(2):
        dm = ImageDataModule("folder", root=tmp_path, image_size=8, val_fraction=0.25, seed=3)
        dm.setup()
        splits.append([dm.train_dataset.source.files[i] for i in dm.val_dataset.indices])
    assert splits[0] == splits[1] and len(splits[0]) == 5


def test_folder_listing_does_not_depend_on_the_filesystem_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two links to one folder: the walk names its files through the first link in name order,
    # whatever order the filesystem lists the links in (else the split differs per machine).
    real = tmp_path / "real"
    real.mkdir()
    Image.new("L", (8, 8)).save(real / "x.png")
    root = tmp_path / "root"
    root.mkdir()
    for name in ("a", "b"):
        (root / name).symlink_to(real, target_is_directory=True)
    listed = [find_image_files(root)]
    walk = os.walk

    def walk_in_reverse_order(*args, **kwargs):  # as another filesystem may list the folders
        for dirpath, dirnames, filenames in walk(*args, **kwargs):
            dirnames.sort(reverse=True)
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(os, "walk", walk_in_reverse_order)
    listed.append(find_image_files(root))
    assert listed == [[root / "a" / "x.png"]] * 2


# --------------------------------------------------------------------------------------------
# Hydra configs
# --------------------------------------------------------------------------------------------

CONFIGS = ["digits", "mnist", "fashion_mnist", "cifar10", "celeba", "folder"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_instantiates_with_every_value_commented(tmp_path: Path, name: str) -> None:
    path = CONFIG_DIR / f"{name}.yaml"
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and not line.startswith("_target_"):
            assert " # " in line, f"{path.name}: value without an inline comment: {line!r}"
    data = OmegaConf.load(path)
    assert data.dataset == name
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": data})
    if name == "folder":
        assert OmegaConf.is_missing(cfg.data, "root")  # a path must be given
        cfg.data.root = str(tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, ImageDataModule)
    assert os.path.abspath(dm.hparams.root) == str(tmp_path)
    expected = {
        "digits": (8, 1, False, 0.1),
        "mnist": (32, 1, False, None),
        "fashion_mnist": (32, 1, False, None),
        "cifar10": (32, 3, True, None),
        "celeba": (64, 3, True, None),
        "folder": (64, 3, True, None),
    }[name]
    hp = dm.hparams
    assert (hp.image_size, hp.image_channels, hp.random_flip) == expected[:3]
    if expected[3] is not None:
        assert hp.val_fraction == expected[3]


def test_digits_config_trains_offline(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {"paths": {"data_dir": str(tmp_path)}, "data": OmegaConf.load(CONFIG_DIR / "digits.yaml")}
    )
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    x = _batch(dm.train_dataloader())
    assert x.shape == (cfg.data.batch_size, 1, 8, 8)  # the config's global batch, one device


def test_real_trainer_feeds_image_batches_to_the_module() -> None:
    import lightning as L

    seen: list[torch.Tensor] = []

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Conv2d(1, 1, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            seen.append(batch)
            return self.layer(batch).pow(2).mean()  # `x = batch`: no (image, label) unpacking

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            seen.append(batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ImageDataModule("digits", image_size=8, image_channels=1, batch_size=16)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,  # runs validation_step once before training
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(), datamodule=dm)
    assert dm.batch_size_per_device == 16
    assert len(seen) >= 3
    for batch in seen:
        _assert_images(batch, channels=1, size=8)
        assert batch.shape[0] == 16
