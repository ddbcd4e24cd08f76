"""Dataset registry and loaders, on small files the tests generate themselves (no network, no shared data)."""

from __future__ import annotations

import gzip
import inspect
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mia_bench.data import (
    DATASETS,
    ArrayData,
    DatasetUnavailableError,
    RawDataset,
    archives,
    list_datasets,
    load_dataset,
    register_dataset,
)
from mia_bench.data.downloads import Archive, fetch_and_extract
from mia_bench.data.files import read_idx

CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "dataset"

EXPECTED_NAMES = {
    "digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100", "stl10", "lfw", "cinic10",
    "purchase100", "texas100", "image_folder", "idx", "npz",
}  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# helpers that write tiny files in the real formats
# ------------------------------------------------------------------------------------------------------


def write_idx(path: Path, arr: np.ndarray) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    arr = np.asarray(arr)
    if arr.dtype == np.int32:
        arr = arr.astype(">i4")
    if arr.dtype == np.float32:
        arr = arr.astype(">f4")
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_digits(n: int, seed: int, h: int = 6, w: int = 5, classes: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    return x, rng.integers(0, classes, size=n).astype(np.uint8)


def write_png(path: Path, size=(8, 6), color=(255, 0, 0), mode="RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def make_tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def csv_bytes(rows: np.ndarray) -> bytes:
    return ("\n".join(",".join(str(int(v)) for v in row) for row in rows) + "\n").encode()


def nearest_centroid_accuracy(raw: RawDataset) -> float:
    x, y = raw.train.x.flatten(1), raw.train.y
    half = len(y) // 2
    cents = torch.stack([x[:half][y[:half] == c].mean(0) for c in range(raw.num_classes)])
    pred = torch.cdist(x[half:], cents).argmin(1)
    return (pred == y[half:]).float().mean().item()


# ------------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------------


def test_registry_holds_every_dataset():
    assert set(list_datasets()) == EXPECTED_NAMES
    assert list_datasets() == sorted(list_datasets())
    assert len(DATASETS) == len(EXPECTED_NAMES) and all(callable(DATASETS.get(n)) for n in DATASETS)


def test_unknown_name_lists_registered_datasets():
    with pytest.raises(ValueError) as err:
        load_dataset("cifar11")
    msg = str(err.value)
    assert "cifar11" in msg
    for name in EXPECTED_NAMES:
        assert name in msg


def test_unexpected_argument_is_named():
    with pytest.raises(TypeError, match="image_size"):
        load_dataset("digits", image_size=8)


def test_register_dataset_decorator():
    @register_dataset("_tmp_test_set")
    def tmp() -> RawDataset:
        return RawDataset("x", ArrayData(torch.zeros(2, 3), torch.zeros(2)), None, 1)

    try:
        assert "_tmp_test_set" in list_datasets()
        assert load_dataset("_tmp_test_set").name == "_tmp_test_set"
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("_tmp_test_set")(lambda: None)
    finally:
        DATASETS._builders.pop("_tmp_test_set")  # the registry has no public unregister: tests only


# ------------------------------------------------------------------------------------------------------
# offline datasets
# ------------------------------------------------------------------------------------------------------


def test_digits_shape_normalisation_labels():
    raw = load_dataset("digits")
    assert raw.name == "digits" and raw.test is None and raw.num_classes == 10
    assert raw.train.x.shape == (1797, 1, 8, 8) and raw.train.x.dtype == torch.float32
    assert raw.train.y.dtype == torch.int64
    assert raw.train.x.min().item() == -1.0 and raw.train.x.max().item() == 1.0
    assert sorted(raw.train.y.unique().tolist()) == list(range(10))
    assert raw.is_image and raw.input_shape == (1, 8, 8)


def test_synthetic_is_seeded_and_shaped():
    a = load_dataset("synthetic", num_records=300, num_classes=5, input_shape=[16], seed=3)
    b = load_dataset("synthetic", num_records=300, num_classes=5, input_shape=[16], seed=3)
    c = load_dataset("synthetic", num_records=300, num_classes=5, input_shape=[16], seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert a.train.x.shape == (300, 16) and a.test is None and a.num_classes == 5 and not a.is_image
    assert torch.bincount(a.train.y).tolist() == [60] * 5  # balanced

    img = load_dataset("synthetic", num_records=40, num_classes=4, input_shape=[3, 12, 12])
    assert img.train.x.shape == (40, 3, 12, 12) and img.is_image and img.train.x.dtype == torch.float32


def test_synthetic_class_sep_controls_difficulty():
    kw = dict(num_records=1000, num_classes=10, input_shape=[32], seed=0)
    hard = nearest_centroid_accuracy(load_dataset("synthetic", class_sep=0.3, **kw))
    easy = nearest_centroid_accuracy(load_dataset("synthetic", class_sep=2.0, **kw))
    assert easy > hard + 0.3
    assert easy > 0.9


def test_synthetic_label_noise():
    clean = load_dataset("synthetic", num_records=2000, label_noise=0.0)
    noisy = load_dataset("synthetic", num_records=2000, label_noise=0.25)
    flipped = (clean.train.y != noisy.train.y).float().mean().item()
    assert torch.equal(clean.train.x, noisy.train.x)  # same records, only labels change
    assert 0.2 < flipped < 0.3 and noisy.meta["num_flipped"] == int((clean.train.y != noisy.train.y).sum())


# ------------------------------------------------------------------------------------------------------
# user data: IDX
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_single_pair_is_population(tmp_path, suffix):
    x, y = fake_digits(12, 0)
    x[0, 0, 0], x[0, 0, 1] = 0, 255
    write_idx(tmp_path / f"emnist-images-idx3-ubyte{suffix}", x)
    write_idx(tmp_path / f"emnist-labels-idx1-ubyte{suffix}", y)
    raw = load_dataset("idx", path=str(tmp_path))
    assert raw.test is None and raw.train.x.shape == (12, 1, 6, 5)
    assert raw.train.x[0, 0, 0, 0].item() == -1.0 and raw.train.x[0, 0, 0, 1].item() == 1.0
    expected = (torch.from_numpy(x).float() / 255 - 0.5) / 0.5
    assert torch.allclose(raw.train.x[:, 0], expected)
    assert raw.train.y.dtype == torch.int64


def test_idx_train_and_t10k_pairs_mixed_compression(tmp_path):
    x_tr, y_tr = fake_digits(10, 1)
    x_te, y_te = fake_digits(4, 2)
    y_tr[:3] = [0, 1, 2]
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x_tr)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y_tr)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x_te)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y_te)
    raw = load_dataset("idx", path=str(tmp_path))
    assert len(raw.train) == 10 and raw.test is not None and len(raw.test) == 4
    assert torch.equal(raw.train.y, torch.from_numpy(y_tr.astype(np.int64)))
    assert torch.equal(raw.test.y, torch.from_numpy(y_te.astype(np.int64)))
    assert raw.num_classes == 3


def test_idx_explicit_files_and_label_remap(tmp_path):
    x, _ = fake_digits(6, 3)
    y = np.array([3, 7, 7, 9, 3, 9], dtype=np.uint8)
    write_idx(tmp_path / "a.idx", x)
    write_idx(tmp_path / "b.idx", y)
    with pytest.raises(ValueError, match=r"3, 7, 9.*remap_labels=true"):
        load_dataset("idx", path=str(tmp_path), images="a.idx", labels="b.idx")  # sparse codes: not silently mapped
    raw = load_dataset("idx", path=str(tmp_path), images="a.idx", labels="b.idx", remap_labels=True)
    assert raw.train.y.tolist() == [0, 1, 1, 2, 0, 2] and raw.num_classes == 3
    assert raw.meta["label_values"] == [3, 7, 9]


def test_idx_errors(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("idx", path=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err.value) and "dataset.loader.path=" in str(err.value)

    with pytest.raises(DatasetUnavailableError, match="images-idx3-ubyte"):
        load_dataset("idx", path=str(tmp_path))  # empty directory

    x, y = fake_digits(4, 0)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    with pytest.raises(DatasetUnavailableError, match="labels"):
        load_dataset("idx", path=str(tmp_path))  # images without labels
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    write_idx(tmp_path / "extra-images-idx3-ubyte", x)
    write_idx(tmp_path / "extra-labels-idx1-ubyte", y)
    with pytest.raises(ValueError, match="dataset.loader.images"):
        load_dataset("idx", path=str(tmp_path))  # ambiguous: two population pairs

    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03garbage")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    truncated = tmp_path / "short"
    truncated.write_bytes(write_idx(tmp_path / "full", x).read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(truncated)
    gz = write_idx(tmp_path / "full.gz", x)
    cut = tmp_path / "cut-images-idx3-ubyte.gz"
    cut.write_bytes(gz.read_bytes()[: len(gz.read_bytes()) // 2])  # an interrupted copy of a .gz
    with pytest.raises(ValueError, match=rf"{cut}: damaged gzip file \(EOFError"):
        read_idx(cut)
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="junk.gz: damaged gzip file"):
        read_idx(tmp_path / "junk.gz")


def test_read_idx_wider_dtypes(tmp_path):
    ints = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    floats = np.linspace(0, 1, 4, dtype=np.float32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "i", ints)), ints)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f.gz", floats)), floats)


def test_idx_on_real_mnist_layout_matches_mnist_loader(tmp_path):
    """The torchvision-backed `mnist` loader reads the same IDX files (faked here) from <root>/MNIST/raw."""
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    x_tr, y_tr = fake_digits(20, 0, h=28, w=28, classes=10)
    x_te, y_te = fake_digits(7, 1, h=28, w=28, classes=10)
    y_tr[:10] = np.arange(10)  # every class present: the generic loader then needs no remapping
    write_idx(raw_dir / "train-images-idx3-ubyte", x_tr)
    write_idx(raw_dir / "train-labels-idx1-ubyte", y_tr)
    write_idx(raw_dir / "t10k-images-idx3-ubyte", x_te)
    write_idx(raw_dir / "t10k-labels-idx1-ubyte", y_te)
    raw = load_dataset("mnist", root=str(tmp_path), download=False)
    assert raw.train.x.shape == (20, 1, 28, 28) and raw.test.x.shape == (7, 1, 28, 28)
    assert raw.num_classes == 10 and raw.meta["normalization"]["mean"] == [0.1307]
    expected = (torch.from_numpy(x_tr).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(raw.train.x[:, 0], expected, atol=1e-5)
    assert torch.equal(raw.test.y, torch.from_numpy(y_te.astype(np.int64)))
    generic = load_dataset("idx", path=str(raw_dir))
    assert torch.equal(generic.train.y, raw.train.y) and torch.equal(generic.test.y, raw.test.y)


# ------------------------------------------------------------------------------------------------------
# user data: npz and image folders
# ------------------------------------------------------------------------------------------------------


def test_npz_tabular_with_label_remap_and_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 4)).astype(np.float64)
    y = np.array([10, 20, 30] * 3)
    xt, yt = rng.normal(size=(3, 4)), np.array([30, 10, 10])
    np.savez(tmp_path / "d.npz", feats=x, lab=y, feats_te=xt, lab_te=yt)
    raw = load_dataset("npz", path=str(tmp_path / "d.npz"), x_key="feats", y_key="lab",
                       x_test_key="feats_te", y_test_key="lab_te", remap_labels=True)  # fmt: skip
    assert raw.train.x.dtype == torch.float32 and raw.train.x.shape == (9, 4) and not raw.is_image
    assert torch.allclose(raw.train.x, torch.from_numpy(x).float())
    assert raw.train.y.tolist() == [0, 1, 2] * 3 and raw.test.y.tolist() == [2, 0, 0]
    assert raw.num_classes == 3 and raw.meta["label_values"] == [10, 20, 30]


def test_npz_images_channels_last_and_one_hot(tmp_path):
    x = np.zeros((5, 6, 6, 3), dtype=np.uint8)
    x[:, :, :, 1] = 255
    y = np.eye(4)[[0, 1, 2, 3, 1]]
    np.savez(tmp_path / "img.npz", x=x, y=y)
    raw = load_dataset("npz", path=str(tmp_path / "img.npz"))
    assert raw.train.x.shape == (5, 3, 6, 6) and raw.is_image and raw.test is None
    assert raw.train.x[:, 0].eq(-1).all() and raw.train.x[:, 1].eq(1).all()
    assert raw.train.y.tolist() == [0, 1, 2, 3, 1] and "label_values" not in raw.meta


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0.0, 1.0, np.nan, 1.0]), r"whole numbers 0\.\.C-1; found nan"),
        (np.array([0, 1, -1, 1]), r"found -1"),
        (np.array([0.0, 1.5, 1.0, 0.0]), r"found 1\.5"),
        (np.array([0, 2, 2, 0]), r"not the classes 0\.\.1 \(no records of 1\).*remap_labels=true"),
        (np.array(["cat", "dog", "cat", "dog"]), r"dtype \['<U3'\].*remap_labels=true"),
    ],
)
def test_npz_bad_labels_are_named_errors(tmp_path, labels, message):
    """NaN, negative, fractional, sparse or string labels stop the load with the values named, instead of
    becoming (silently wrong) classes; string and sparse labels load with remap_labels=true."""
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3), np.float32), y=labels)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("npz", path=str(tmp_path / "d.npz"))
    assert "d.npz" in str(err.value)
    if labels.dtype.kind in "U" or np.all(labels == np.round(labels)) and labels.min() >= 0:
        raw = load_dataset("npz", path=str(tmp_path / "d.npz"), remap_labels=True)
        assert raw.num_classes == 2 and raw.train.y.tolist() == np.unique(labels, return_inverse=True)[1].tolist()
        assert raw.meta["label_values"] == np.unique(labels).tolist()


def test_npz_errors(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("npz", path=str(tmp_path / "missing.npz"))
    assert "missing.npz" in str(err.value) and str(tmp_path) in str(err.value)
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 2)), b=np.zeros(2))
    with pytest.raises(ValueError, match=r"holds \['a', 'b'\]"):
        load_dataset("npz", path=str(tmp_path / "d.npz"))


def test_image_folder(tmp_path):
    colors = {"zebra": (0, 0, 255), "ant": (255, 0, 0), "bee": (0, 255, 0)}
    for name, color in colors.items():
        for i in range(2):
            write_png(tmp_path / "train" / name / f"{i}.png", size=(8 + i, 6), color=color)
    write_png(tmp_path / "test" / "bee" / "0.png", size=(5, 5), color=(0, 255, 0))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")

    raw = load_dataset("image_folder", path=str(tmp_path / "train"), image_size=4,
                       test_path=str(tmp_path / "test"))  # fmt: skip
    assert raw.meta["classes"] == ["ant", "bee", "zebra"] and raw.num_classes == 3
    assert raw.train.x.shape == (6, 3, 4, 4) and raw.train.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(raw.train.x[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # red "ant"
    assert raw.test.x.shape == (1, 3, 4, 4) and raw.test.y.tolist() == [1]

    gray = load_dataset("image_folder", path=str(tmp_path / "train"), image_size=4, grayscale=True)
    assert gray.train.x.shape == (6, 1, 4, 4) and gray.test is None

    with pytest.raises(ValueError, match="image_size"):  # mixed sizes without resizing
        load_dataset("image_folder", path=str(tmp_path / "train"))
    with pytest.raises(DatasetUnavailableError, match="dataset.loader.path"):
        load_dataset("image_folder", path=str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------------------------
# download-backed datasets without network: clear errors, and loading from local copies
# ------------------------------------------------------------------------------------------------------

MISSING_CASES = {
    "mnist": ("MNIST", "train-images-idx3-ubyte"),
    "fashion_mnist": ("FashionMNIST", "t10k-labels-idx1-ubyte"),
    "cifar10": ("", "cifar-10-batches-py/data_batch_1"),
    "cifar100": ("", "cifar-100-python/train"),
    "stl10": ("", "stl10_binary/train_X.bin"),
    "lfw": ("lfw_home", "lfw_funneled"),
    "cinic10": ("cinic10", "CINIC-10.tar.gz"),
    "purchase100": ("purchase100", "dataset_purchase"),
    "texas100": ("texas100", "texas/100/feats"),
}


@pytest.mark.parametrize("name", sorted(MISSING_CASES))
def test_missing_data_without_download_raises_clear_error(tmp_path, name):
    folder, expected_file = MISSING_CASES[name]
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset(name, root=str(tmp_path), download=False)
    msg = str(err.value)
    assert f"'{name}'" in msg
    assert str(tmp_path / folder).rstrip("/") in msg  # absolute directory searched
    assert expected_file in msg  # what should be there
    assert "http" in msg  # where to get it
    assert "data.root=" in msg  # how to point at an existing copy


def test_every_download_backed_dataset_is_covered():
    takes_root = {n for n in DATASETS if "download" in inspect.signature(DATASETS.get(n)).parameters}
    assert takes_root == set(MISSING_CASES)


def test_corrupted_torchvision_archive_is_reported(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert "corrupted" in str(err.value) and "c58f30108f718f92721af3b95e74349a" in str(err.value)



def test_corrupt_extracted_cifar_files_are_reported_as_corrupt_not_missing(tmp_path):
    """Batch files that exist but fail torchvision's md5 are named as corrupt (with both checksums); a folder
    with some batches gone names the missing ones."""
    _fake_cifar10(tmp_path)  # every file present, none with the real md5
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    msg = str(err.value)
    assert "missing" not in msg.split("\n")[0] and "corrupted" in msg
    assert f"{tmp_path / 'cifar-10-batches-py' / 'data_batch_1'} (its md5 is" in msg
    assert "c99cafc152244af753f735de768cd75f" in msg  # data_batch_1's expected md5
    for f in (tmp_path / "cifar-10-batches-py").iterdir():
        if f.name != "data_batch_3":
            f.unlink()
    with pytest.raises(DatasetUnavailableError, match=r"6 of the 7 files are missing \(.*data_batch_1"):
        load_dataset("cifar10", root=str(tmp_path), download=False)


def test_unreadable_mnist_files_are_reported_as_unreadable(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        (raw / name).write_bytes(b"\x00\x00\x08\x03 truncated")
    with pytest.raises(DatasetUnavailableError, match="the files are there but cannot be read"):
        load_dataset("mnist", root=str(tmp_path), download=False)

def test_corrupted_public_archive_is_reported(tmp_path):
    (tmp_path / "cinic10").mkdir()
    (tmp_path / "cinic10" / "CINIC-10.tar.gz").write_bytes(b"truncated download")
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("cinic10", root=str(tmp_path), download=False)
    msg = str(err.value)
    assert "corrupted" in msg and "6ee4d0c996905fe93221de577967a372" in msg and str(tmp_path) in msg

    # no published checksum (purchase100): a broken archive fails at extraction, with a clear message
    (tmp_path / "purchase100").mkdir()
    (tmp_path / "purchase100" / "dataset_purchase.tgz").write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(DatasetUnavailableError, match="cannot extract"):
        load_dataset("purchase100", root=str(tmp_path), download=False)


def test_cinic10_from_local_folder_tree(tmp_path):
    base = tmp_path / "cinic10"
    for split, shade in (("train", 0), ("valid", 100), ("test", 200)):
        for c, cls in enumerate(archives.CINIC10_CLASSES):
            write_png(base / split / cls / f"{cls}_{split}.png", size=(32, 32), color=(shade, c, 0))
    write_png(base / "train" / "cat" / "gray.png", size=(32, 32), color=(7, 7, 7), mode="L")
    raw = load_dataset("cinic10", root=str(tmp_path), download=False)
    assert raw.train.x.shape == (11, 3, 32, 32) and raw.test.x.shape == (10, 3, 32, 32)
    assert raw.num_classes == 10 and raw.test.y.tolist() == list(range(10))
    assert list(base.glob("mia_bench_cache_*.npz"))  # decoded once, cached
    both = load_dataset("cinic10", root=str(tmp_path), download=False, include_valid=True)
    assert len(both.train) == 21 and torch.equal(both.train.x[:11], raw.train.x)


def test_purchase100_and_texas100_from_archives(tmp_path):
    rng = np.random.default_rng(0)
    table = np.concatenate([rng.integers(1, 101, size=(6, 1)), rng.integers(0, 2, size=(6, 600))], axis=1)
    (tmp_path / "purchase100").mkdir()
    make_tgz(tmp_path / "purchase100" / "dataset_purchase.tgz", {"dataset_purchase": csv_bytes(table)})
    raw = load_dataset("purchase100", root=str(tmp_path), download=False)
    assert raw.train.x.shape == (6, 600) and raw.train.x.dtype == torch.float32 and raw.test is None
    assert raw.num_classes == 100 and torch.equal(raw.train.y, torch.from_numpy(table[:, 0] - 1))
    assert torch.equal(raw.train.x, torch.from_numpy(table[:, 1:]).float())
    (tmp_path / "purchase100" / "dataset_purchase").unlink()  # the parsed cache is enough afterwards
    assert torch.equal(load_dataset("purchase100", root=str(tmp_path), download=False).train.x, raw.train.x)

    feats, labels = rng.integers(0, 2, size=(4, 6169)), np.array([[1], [100], [50], [7]])
    (tmp_path / "texas100").mkdir()
    make_tgz(tmp_path / "texas100" / "dataset_texas.tgz",
             {"texas/100/feats": csv_bytes(feats), "texas/100/labels": csv_bytes(labels)})  # fmt: skip
    raw = load_dataset("texas100", root=str(tmp_path), download=False)
    assert raw.train.x.shape == (4, 6169) and raw.train.y.tolist() == [0, 99, 49, 6]


def test_tabular_format_is_checked(tmp_path):
    (tmp_path / "purchase100").mkdir()
    (tmp_path / "purchase100" / "dataset_purchase").write_bytes(csv_bytes(np.ones((3, 11), dtype=int)))
    with pytest.raises(DatasetUnavailableError, match="expected 601"):
        load_dataset("purchase100", root=str(tmp_path), download=False)


@pytest.fixture
def local_http(tmp_path):
    """A loopback HTTP server over tmp_path/www, standing in for the public mirrors (no network needed)."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_and_extract_downloads_verifies_and_falls_back(tmp_path, local_http):
    from torchvision.datasets.utils import calculate_md5

    www, url = local_http
    src = make_tgz(www / "src.tgz", {"payload/data.txt": b"hello"})
    md5 = calculate_md5(str(src))
    dest = tmp_path / "dest"
    archive = Archive("a.tgz", (f"{url}/missing.tgz", f"{url}/src.tgz"), md5)  # first mirror is down
    fetch_and_extract("demo", archive, dest, True, ["payload/data.txt"], "data.root=...",
                      lambda: (dest / "payload" / "data.txt").is_file())  # fmt: skip
    assert (dest / "payload" / "data.txt").read_bytes() == b"hello"
    assert (dest / "a.tgz").is_file() and not (dest / "a.tgz.part").exists()

    bad = Archive("b.tgz", (f"{url}/src.tgz",), "0" * 32)
    with pytest.raises(DatasetUnavailableError) as err:
        fetch_and_extract("demo", bad, tmp_path / "other", True, ["x"], "data.root=...", lambda: False)
    msg = str(err.value)
    assert f"corrupted, its md5 is {md5}, expected {'0' * 32}" in msg and f"{url}/src.tgz" in msg
    assert not (tmp_path / "other" / "b.tgz").exists() and not (tmp_path / "other" / "b.tgz.part").exists()


def test_purchase100_download_path(tmp_path, local_http, monkeypatch):
    www, url = local_http
    table = np.concatenate([np.full((3, 1), 100), np.zeros((3, 600), dtype=int)], axis=1)
    make_tgz(www / "dataset_purchase.tgz", {"dataset_purchase": csv_bytes(table)})
    mirror = Archive("dataset_purchase.tgz", (f"{url}/dataset_purchase.tgz",), None)
    monkeypatch.setattr(archives, "PURCHASE100_ARCHIVE", mirror)
    raw = load_dataset("purchase100", root=str(tmp_path / "data"), download=True)
    assert raw.train.x.shape == (3, 600) and raw.train.y.tolist() == [99] * 3


# ------------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------------

CONFIG_FILES = sorted(CONF_DIR.glob("*.yaml"))


def test_one_config_per_registered_dataset():
    assert {p.stem for p in CONFIG_FILES} == set(list_datasets())


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_shape(path):
    cfg = OmegaConf.load(path)
    assert set(cfg.keys()) == {"name", "loader", "population_size", "test_size", "public_size",
                               "train_augment", "query_augment"}  # fmt: skip
    assert cfg.name == path.stem and "name" not in cfg.loader  # the name is stated once
    assert set(cfg.train_augment.keys()) == {"crop_padding", "hflip"}
    assert set(cfg.query_augment.keys()) == {"shift", "hflip"}
    # every dataset holds out a public split, so defenses needing clean data compare on the same population
    assert 0 < cfg.public_size and (cfg.public_size < 1 or float(cfg.public_size).is_integer())
    params = inspect.signature(DATASETS.get(path.stem)).parameters
    loader_args = set(cfg.loader.keys()) - {"_target_"}
    assert loader_args <= set(params), f"{path.name}: {loader_args - set(params)} are not loader arguments"
    if "root" in params:
        assert OmegaConf.to_container(cfg.loader)["root"] == "${data.root}"
        assert OmegaConf.to_container(cfg.loader)["download"] == "${data.download}"
    if "path" in params and "root" not in params:  # user data: the path is mandatory
        assert OmegaConf.is_missing(cfg.loader, "path")
    elif "path" in params:  # a public dataset: a local copy instead of the download
        assert cfg.loader.path is None
    text = path.read_text()
    for line in text.splitlines():
        assert len(line) <= 120, f"{path.name}: line longer than 120 characters: {line!r}"
    if cfg.name in ("digits", "mnist", "fashion_mnist", "idx"):
        assert not cfg.train_augment.hflip and not cfg.query_augment.hflip


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_targets_the_registered_loader(path):
    """Hydra builds the dataset by calling the loader function the YAML names: it must be the one registered
    under the YAML's name, so the Python API (load_dataset) and the configs build the same data."""
    from hydra.utils import get_method

    cfg = OmegaConf.load(path)
    assert cfg.name in DATASETS
    assert get_method(cfg.loader._target_) is DATASETS.get(cfg.name)


def _instantiate(name: str, root: Path, **loader_overrides):
    from hydra.utils import instantiate

    cfg = OmegaConf.create({"data": {"root": str(root), "download": False}})
    cfg.dataset = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    for key, value in loader_overrides.items():
        cfg.dataset.loader[key] = value
    return cfg, instantiate(cfg.dataset.loader)


def test_configs_instantiate_offline_datasets(tmp_path):
    cfg, raw = _instantiate("digits", tmp_path)
    assert raw.name == "digits" and len(raw.train) - cfg.dataset.test_size == 1500
    _, raw = _instantiate("synthetic", tmp_path, num_records=50, input_shape=[3, 8, 8])  # ListConfig arg
    assert raw.train.x.shape == (50, 3, 8, 8)

    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]))
    _, raw = _instantiate("npz", tmp_path, path=str(tmp_path / "d.npz"))
    assert raw.train.x.shape == (4, 3)
    x, y = fake_digits(5, 0)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    _, raw = _instantiate("idx", tmp_path, path=str(tmp_path))
    assert raw.train.x.shape == (5, 1, 6, 5)
    write_png(tmp_path / "imgs" / "a" / "0.png")
    write_png(tmp_path / "imgs" / "b" / "0.png")
    _, raw = _instantiate("image_folder", tmp_path, path=str(tmp_path / "imgs"))
    assert raw.train.x.shape == (2, 3, 6, 8)


@pytest.mark.parametrize("name", sorted(MISSING_CASES))
def test_configs_of_download_backed_datasets_fail_clearly_offline(tmp_path, name):
    with pytest.raises(Exception) as err:  # Hydra wraps it in InstantiationException; the cause is ours
        _instantiate(name, tmp_path / "data")
    cause = err.value if isinstance(err.value, DatasetUnavailableError) else err.value.__cause__
    assert isinstance(cause, DatasetUnavailableError) and str(tmp_path / "data") in str(cause)


def _fake_cifar10(root: Path, per_batch: int = 24, n_test: int = 24) -> np.ndarray:
    """torchvision's CIFAR-10 layout (pickled batches, channel-first rows of 3072 bytes) with seeded pixels."""
    import pickle

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    first = None
    for name, n in [*[(f"data_batch_{i}", per_batch) for i in range(1, 6)], ("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = (np.arange(n) % 10).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        first = data if first is None else first
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return first


@pytest.mark.slow
def test_cifar10_local_copy_loads_and_runs_a_cell(tmp_path, monkeypatch, compose_cfg):
    """The CIFAR-10 code path short of the download: torchvision's files -> normalised [N, 3, 32, 32] tensors ->
    the cifar10 config's crops, flips and query augmentations -> a full cell. (The md5 check is bypassed: the
    real archive cannot be fetched here; its checksum is tested in test_corrupted_torchvision_archive_is_reported.)"""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    from mia_bench.data.vision import CIFAR10_NORM
    from mia_bench.pipeline import run
    from tests.conftest import TINY

    first = _fake_cifar10(tmp_path / "data")
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)  # batches.meta's md5
    raw = load_dataset("cifar10", root=str(tmp_path / "data"), download=False)
    assert raw.train.x.shape == (120, 3, 32, 32) and raw.test.x.shape == (24, 3, 32, 32)
    assert raw.num_classes == 10 and raw.train.y[:12].tolist() == [*range(10), 0, 1]
    mean, std = CIFAR10_NORM
    c, h, w = 1, 5, 7  # green channel, row 5, column 7 of the first training image
    expected = (first[0, c * 1024 + h * 32 + w] / 255.0 - mean[c]) / std[c]
    assert raw.train.x[0, c, h, w].item() == pytest.approx(expected, abs=1e-5)

    cfg = compose_cfg(
        [*TINY, "dataset=cifar10", "model=cnn", "dataset.public_size=20", "dataset.population_size=null",
         "attack=[loss,lira_online]", "logger=none"]  # fmt: skip
    )
    records = run(cfg, {"dataset": "cifar10"})
    assert {r["attack"] for r in records} == {"loss", "lira_online"}
    assert records[0]["num_queries"] == 10  # flip x {clean, 4 two-pixel shifts}, as the README says


# ------------------------------------------------------------------------------------------------------
# local copies as image trees (the CIFAR-10 JPEG copy's layout), decoded once
# ------------------------------------------------------------------------------------------------------

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _tree_images(per_class: dict[str, int], classes=CIFAR10_NAMES, side: int = 32) -> dict[str, np.ndarray]:
    """``{'cifar10-jpeg/<split>/<class>/NNNN.png': pixels}``: lossless PNGs, so decoded pixels can be compared."""
    rng = np.random.default_rng(1)
    return {f"cifar10-jpeg/{split}/{c}/{i:04d}.png": rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            for split, n in per_class.items() for c in classes for i in range(n)}


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _write_tree(root: Path, images: dict[str, np.ndarray]) -> Path:
    for name, a in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_png(a))
    return root


def test_cifar10_from_a_tarball_and_a_folder_decodes_once(tmp_path, monkeypatch):
    """dataset.loader.path: the same records from the tarball and its extracted folder, in (class, file) order, with
    the torchvision path's normalisation; the second load reads the kept arrays (decoding is not called again)."""
    from mia_bench.data import image_tree
    from mia_bench.data.vision import CIFAR10_NORM

    images = _tree_images({"train": 3, "test": 1})
    tarball = make_tgz(tmp_path / "copy.tar.gz", {n: _png(a) for n, a in reversed(images.items())})  # any order
    folder = _write_tree(tmp_path / "extracted", images)
    raw = load_dataset("cifar10", root=str(tmp_path / "data"), download=False, path=str(tarball))
    assert raw.train.x.shape == (30, 3, 32, 32) and raw.test.x.shape == (10, 3, 32, 32)
    assert raw.train.y.tolist() == [c for c in range(10) for _ in range(3)] and raw.meta["classes"] == list(
        CIFAR10_NAMES)
    mean, std = CIFAR10_NORM
    pixel = images["cifar10-jpeg/train/bird/0001.png"][5, 7, 1]  # row 5, column 7, green
    assert raw.train.x[2 * 3 + 1, 1, 5, 7].item() == pytest.approx((pixel / 255 - mean[1]) / std[1], abs=1e-6)
    from_folder = load_dataset("cifar10", root=str(tmp_path / "data"), download=False, path=str(folder))
    assert torch.equal(from_folder.train.x, raw.train.x) and torch.equal(from_folder.test.y, raw.test.y)
    assert len(list((tmp_path / "data" / "decoded").glob("cifar10-*.npz"))) == 2  # one store per source

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(image_tree, "_decode", no_decoding)
    again = load_dataset("cifar10", root=str(tmp_path / "data"), download=False, path=str(tarball))
    assert torch.equal(again.train.x, raw.train.x)


def test_a_damaged_decoded_store_is_decoded_again(tmp_path, caplog):
    """A store whose arrays no longer match their sha256 (or that cannot be read) is never used: decoded again."""
    folder = _write_tree(tmp_path / "copy", _tree_images({"train": 1, "test": 1}))
    first = load_dataset("cifar10", root=str(tmp_path / "data"), download=False, path=str(folder))
    (store,) = (tmp_path / "data" / "decoded").glob("*.npz")
    with np.load(store) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"][0, 0, 0, 0] ^= 1  # one bit of one pixel
    np.savez(store, **arrays)
    with caplog.at_level("WARNING"):
        again = load_dataset("cifar10", root=str(tmp_path / "data"), download=False, path=str(folder))
    assert "damaged" in caplog.text and torch.equal(again.train.x, first.train.x)
    store.write_bytes(store.read_bytes()[:100])  # truncated
    assert torch.equal(load_dataset("cifar10", root=str(tmp_path / "data"), download=False,
                                    path=str(folder)).train.x, first.train.x)


def test_a_wrong_or_missing_local_copy_names_the_problem(tmp_path):
    """Missing path, a folder without train/ and test/, wrong class folders, a truncated tarball, odd image sizes: a
    DatasetUnavailableError naming the path, what was found and the override."""
    data = str(tmp_path / "data")

    def refused(path, match):
        with pytest.raises(DatasetUnavailableError, match=match) as err:
            load_dataset("cifar10", root=data, download=False, path=str(path))
        assert str(path) in str(err.value) and "dataset.loader.path=" in str(err.value)

    refused(tmp_path / "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "no train/ and test/")
    wrong = dict(_tree_images({"train": 1, "test": 1}, classes=("cat", "dog")))
    refused(_write_tree(tmp_path / "two", wrong), r"class folders are \['cat', 'dog'\]")
    tarball = make_tgz(tmp_path / "t.tar.gz", {n: _png(a) for n, a in _tree_images({"train": 2, "test": 1}).items()})
    (tmp_path / "cut.tar.gz").write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    refused(tmp_path / "cut.tar.gz", "cannot be read")
    small = _tree_images({"train": 1, "test": 1}, side=16)
    refused(_write_tree(tmp_path / "small", small), "16x16x3, expected 32x32x3")
    no_test = {n: a for n, a in _tree_images({"train": 1, "test": 1}).items() if "/test/" not in n or "/cat/" not in n}
    refused(_write_tree(tmp_path / "gap", no_test), r"test split has no images of \['cat'\]")


def test_stl10_local_copy_keeps_torchvisions_label_order_and_resizes(tmp_path):
    """STL-10's classes in torchvision's order (car before cat), resized while decoding when image_size is set."""
    names = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
    folder = _write_tree(tmp_path / "stl", _tree_images({"train": 1, "test": 1}, classes=names, side=96))
    raw = load_dataset("stl10", root=str(tmp_path / "data"), download=False, path=str(folder), image_size=32)
    assert raw.train.x.shape == (10, 3, 32, 32) and raw.meta["classes"] == list(names)
    assert raw.train.y.tolist() == list(range(10))


def test_the_cifar10_config_takes_a_local_copy(tmp_path, compose_cfg):
    """`dataset=cifar10 dataset.loader.path=...` composes and loads through the pipeline's own data step, with the
    config's public split carved out as on the torchvision path."""
    from mia_bench.pipeline import load_data

    folder = _write_tree(tmp_path / "copy", _tree_images({"train": 4, "test": 1}))
    cfg = compose_cfg(["dataset=cifar10", f"dataset.loader.path={folder}", "dataset.public_size=10"])
    raw, splits = load_data(cfg.dataset, cfg.seed)
    assert (len(splits.population), len(splits.public), len(splits.test)) == (30, 10, 10)
    assert splits.input_shape == (3, 32, 32) and raw.name == "cifar10"
