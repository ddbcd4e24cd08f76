"""Dataset registry and loaders.

Each loader is a plain function registered by name (in the manner of timm's model registry) that returns a
:class:`~mia_bench.data.base.RawDataset`: float32 inputs already normalised with FIXED per-dataset constants
(never statistics fitted on the records, which would leak membership), int64 labels in ``0..C-1``, and the
official test split where the dataset has one (``test=None`` otherwise; the pipeline carves one).

Hydra builds datasets through :func:`load_dataset` (see ``conf/dataset/*.yaml``)::

    raw = load_dataset("cifar10", root="data", download=True)

Loaders never fail with a bare stack trace for missing data: they raise
:class:`~mia_bench.data.base.DatasetUnavailableError` naming the directory searched, the files expected
there, the download URL and the config override that points at an existing copy.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mia_bench.data.base import ArrayData, DatasetUnavailableError, RawDataset
from mia_bench.data.downloads import (
    Archive,
    abs_dir,
    fetch_and_extract,
    md5_mismatch,
    root_override,
    unavailable,
)
from mia_bench.data.files import (
    HALF,
    array_to_x,
    find_idx_pairs,
    images_to_float,
    labels_1d,
    list_image_folder,
    read_idx,
    read_images,
    remap_labels,
)

log = logging.getLogger(__name__)

__all__ = ["DATASETS", "register_dataset", "list_datasets", "load_dataset"]

DATASETS: dict[str, Callable[..., RawDataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., RawDataset]], Callable[..., RawDataset]]:
    """Decorator registering a loader under ``name`` (re-registering the same function is a no-op)."""

    def decorator(fn: Callable[..., RawDataset]) -> Callable[..., RawDataset]:
        old = DATASETS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"dataset {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        DATASETS[name] = fn
        return fn

    return decorator


def list_datasets() -> list[str]:
    """Sorted names of all registered datasets."""
    return sorted(DATASETS)


def load_dataset(name: str, **kwargs) -> RawDataset:
    """Build the registered dataset ``name`` with the loader's keyword arguments.

    Unknown names raise ``ValueError`` listing the registered ones; arguments the loader does not take
    raise ``TypeError`` listing the ones it does. OmegaConf containers (from Hydra) are converted to plain
    Python lists/dicts first.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Registered datasets: {', '.join(list_datasets())}")
    fn = DATASETS[name]
    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    params = inspect.signature(fn).parameters
    unexpected = sorted(set(kwargs) - set(params))
    if unexpected:
        raise TypeError(
            f"dataset {name!r} got unexpected argument(s) {unexpected}; it accepts {list(params)}"
        )
    raw = fn(**kwargs)
    raw.name = name
    return raw


def _plain(value):
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _meta(
    modality: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **extra
) -> dict:
    meta: dict = {"modality": modality}
    if mean is not None:
        meta["normalization"] = {"mean": list(mean), "std": list(std)}  # x = (pixel/255 - mean) / std
    meta.update(extra)
    return meta


def _labels(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)


# ==========================================================================================================
# offline datasets
# ==========================================================================================================


@register_dataset("digits")
def digits() -> RawDataset:
    """scikit-learn's 8x8 digits (1797 records, ships with sklearn): ``[N, 1, 8, 8]``, pixels/16 then
    (x-0.5)/0.5. No official test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1).div_(16.0).sub_(0.5).div_(0.5)
    return RawDataset(
        name="digits",
        train=ArrayData(x, _labels(bunch.target)),
        test=None,
        num_classes=10,
        meta=_meta("image", (0.5,), (0.5,), pixel_max=16, classes=[str(i) for i in range(10)]),
    )


@register_dataset("synthetic")
def synthetic(
    num_records: int = 2000,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32,),
    class_sep: float = 1.0,
    label_noise: float = 0.0,
    seed: int = 0,
) -> RawDataset:
    """Seeded Gaussian classes: ``x = prototype[y] + N(0, I)``.

    Prototypes are random directions of norm ``3 * class_sep`` (pairwise distance ~ 4.2 noise std at
    ``class_sep=1``: ~90 % Bayes accuracy with 10 classes; lower ``class_sep`` = harder, more overfitting).
    For image shapes ``[C, H, W]`` the prototypes are smooth spatial patterns (random at 1/4 resolution,
    bilinearly upsampled), so the data is image-shaped in structure too, not only in tensor shape.
    ``label_noise`` is the probability that a record's label is replaced by a different random class.
    Classes are balanced. No official test split.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"input_shape must be [D] or [C, H, W] with positive sizes, got {list(shape)}")
    if num_classes < 2 or num_records < num_classes:
        raise ValueError(
            f"need num_classes >= 2 and num_records >= num_classes, got {num_records=}, {num_classes=}"
        )
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    g = torch.Generator().manual_seed(int(seed))
    dim = math.prod(shape)
    if len(shape) == 3:
        c, h, w = shape
        low = torch.randn(num_classes, c, max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4)), generator=g)
        protos = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).reshape(
            num_classes, dim
        )
    else:
        protos = torch.randn(num_classes, dim, generator=g)
    protos = protos / protos.norm(dim=1, keepdim=True).clamp_min(1e-12) * (3.0 * float(class_sep))
    y = torch.arange(num_records) % num_classes
    y = y[torch.randperm(num_records, generator=g)]
    x = protos[y] + torch.randn(num_records, dim, generator=g)
    flip = torch.rand(num_records, generator=g) < label_noise
    offset = torch.randint(1, num_classes, (num_records,), generator=g)
    y = torch.where(flip, (y + offset) % num_classes, y)
    return RawDataset(
        name="synthetic",
        train=ArrayData(x.reshape(num_records, *shape), y),
        test=None,
        num_classes=num_classes,
        meta=_meta(
            "image" if len(shape) == 3 else "tabular",
            class_sep=float(class_sep),
            label_noise=float(label_noise),
            num_flipped=int(flip.sum()),
            seed=int(seed),
        ),
    )


# ==========================================================================================================
# torchvision-backed datasets
# ==========================================================================================================

# Fixed, published per-channel constants (never refitted on a subset of records).
MNIST_NORM = ((0.1307,), (0.3081,))
FASHION_MNIST_NORM = ((0.2860,), (0.3530,))
CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
STL10_NORM = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
# From the CINIC-10 README (https://github.com/BayesWatch/cinic-10).
CINIC10_NORM = ((0.47889522, 0.47227842, 0.43047404), (0.24205776, 0.23828046, 0.25874835))


def _torchvision(
    name: str,
    searched: Path,
    expected: Sequence[str],
    urls: Sequence[str],
    archives: Sequence[tuple[Path, str | None]],
    override: str,
    download: bool,
    build: Callable[[], object],
):
    """Run a torchvision constructor, turning any failure (missing files, no network, bad checksum) into a
    :class:`DatasetUnavailableError` with the full story."""
    try:
        return build()
    except DatasetUnavailableError:
        raise
    except Exception as exc:
        corrupted = [f"{p} ({problem})" for p, md5 in archives if (problem := md5_mismatch(p, md5))]
        if download:
            reason = f"download failed or the files are unusable ({type(exc).__name__}: {exc})"
        else:
            reason = (
                f"the files are missing and downloading is off (download=False / data.download=false) [{exc}]"
            )
        if corrupted:
            reason += (
                "; corrupted or partial archive(s) found: "
                + "; ".join(corrupted)
                + " -- delete them and retry"
            )
        raise unavailable(name, searched, expected, urls, reason, override) from exc


def _mnist_like(name: str, cls_name: str, root: str, download: bool, norm) -> RawDataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root_dir = abs_dir(root)
    raw = root_dir / cls_name / "raw"
    expected = [f"{os.path.splitext(f)[0]}  (or {f}, md5 {md5})" for f, md5 in cls.resources]
    urls = [cls.mirrors[0] + f for f, _ in cls.resources]
    archives = [(raw / f, md5) for f, md5 in cls.resources]
    override = root_override(f"{cls_name}/raw")

    def build(train: bool, dl: bool):
        return _torchvision(
            name,
            raw,
            expected,
            urls,
            archives,
            override,
            dl,
            lambda: cls(str(root_dir), train=train, download=dl),
        )

    tr, te = build(True, download), build(False, False)
    mean, std = norm
    return RawDataset(
        name=name,
        train=ArrayData(images_to_float(tr.data, mean, std), _labels(tr.targets)),
        test=ArrayData(images_to_float(te.data, mean, std), _labels(te.targets)),
        num_classes=len(tr.classes),
        meta=_meta("image", mean, std, classes=list(tr.classes)),
    )


@register_dataset("mnist")
def mnist(root: str, download: bool = True) -> RawDataset:
    """MNIST (60k train / 10k test, ``[N, 1, 28, 28]``) via torchvision, under ``<root>/MNIST/raw``."""
    return _mnist_like("mnist", "MNIST", root, download, MNIST_NORM)


@register_dataset("fashion_mnist")
def fashion_mnist(root: str, download: bool = True) -> RawDataset:
    """Fashion-MNIST (60k / 10k, ``[N, 1, 28, 28]``) via torchvision, under ``<root>/FashionMNIST/raw``."""
    return _mnist_like("fashion_mnist", "FashionMNIST", root, download, FASHION_MNIST_NORM)


def _cifar_like(name: str, cls_name: str, root: str, download: bool, norm) -> RawDataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root_dir = abs_dir(root)
    names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    expected = [f"{cls.base_folder}/{f}" for f in names] + [
        f"(or the archive {cls.filename}, md5 {cls.tgz_md5}, extracted automatically)"
    ]
    archives = [(root_dir / cls.filename, cls.tgz_md5)]
    override = root_override(cls.base_folder)

    def build(train: bool, dl: bool):
        return _torchvision(
            name,
            root_dir,
            expected,
            [cls.url],
            archives,
            override,
            dl,
            lambda: cls(str(root_dir), train=train, download=dl),
        )

    tr, te = build(True, download), build(False, False)
    mean, std = norm
    return RawDataset(
        name=name,
        train=ArrayData(images_to_float(tr.data, mean, std, channels_last=True), _labels(tr.targets)),
        test=ArrayData(images_to_float(te.data, mean, std, channels_last=True), _labels(te.targets)),
        num_classes=len(tr.classes),
        meta=_meta("image", mean, std, classes=list(tr.classes)),
    )


@register_dataset("cifar10")
def cifar10(root: str, download: bool = True) -> RawDataset:
    """CIFAR-10 (50k train / 10k test, ``[N, 3, 32, 32]``) via torchvision, in
    ``<root>/cifar-10-batches-py``."""
    return _cifar_like("cifar10", "CIFAR10", root, download, CIFAR10_NORM)


@register_dataset("cifar100")
def cifar100(root: str, download: bool = True) -> RawDataset:
    """CIFAR-100 (50k / 10k, 100 fine classes) via torchvision, under ``<root>/cifar-100-python``."""
    return _cifar_like("cifar100", "CIFAR100", root, download, CIFAR100_NORM)


@register_dataset("stl10")
def stl10(root: str, download: bool = True, image_size: int = 96) -> RawDataset:
    """STL-10 labeled splits (5k train / 8k test, ``[N, 3, 96, 96]``; ``image_size`` resizes, antialiased)
    via torchvision, under ``<root>/stl10_binary``. The unlabeled split is not used (but is part of the
    archive torchvision verifies)."""
    import torchvision.datasets as tvd

    cls = tvd.STL10
    root_dir = abs_dir(root)
    expected = [f"{cls.base_folder}/{f}" for f, _ in cls.train_list + cls.test_list] + [
        f"(or the archive {cls.filename}, md5 {cls.tgz_md5}, ~2.6 GB, extracted automatically)"
    ]
    archives = [(root_dir / cls.filename, cls.tgz_md5)]
    override = root_override(cls.base_folder)

    def build(split: str, dl: bool):
        return _torchvision(
            "stl10",
            root_dir,
            expected,
            [cls.url],
            archives,
            override,
            dl,
            lambda: cls(str(root_dir), split=split, download=dl),
        )

    tr, te = build("train", download), build("test", False)
    mean, std = STL10_NORM
    size = None if image_size in (None, 96) else int(image_size)
    return RawDataset(
        name="stl10",
        train=ArrayData(images_to_float(tr.data, mean, std, size=size), _labels(tr.labels)),
        test=ArrayData(images_to_float(te.data, mean, std, size=size), _labels(te.labels)),
        num_classes=len(tr.classes),
        meta=_meta("image", mean, std, classes=list(tr.classes)),
    )


# LFW comes through scikit-learn's fetcher: its figshare mirror is reliable (torchvision's LFWPeople points
# at vis-www.cs.umass.edu) and it verifies the sha256 of every file it downloads.
_LFW_FALLBACK_URLS = ("https://ndownloader.figshare.com/files/5976015",)  # lfw-funneled.tgz


def _lfw_urls() -> list[str]:
    try:
        from sklearn.datasets import _lfw

        return [_lfw.FUNNELED_ARCHIVE.url, *(t.url for t in _lfw.TARGETS)]
    except (ImportError, AttributeError):  # private sklearn API moved: the message still names the archive
        return list(_LFW_FALLBACK_URLS)


@register_dataset("lfw")
def lfw(
    root: str,
    download: bool = True,
    min_faces_per_person: int = 20,
    image_size: int = 32,
    grayscale: bool = False,
) -> RawDataset:
    """Labeled Faces in the Wild (funneled), people with at least ``min_faces_per_person`` images
    (20 -> 62 people, ~3k images). sklearn's face crop (125x94) is centre-cropped to a square and resized
    to ``image_size``; RGB unless ``grayscale``. Pixels (x-0.5)/0.5. Stored under ``<root>/lfw_home``
    (scikit-learn's layout). No official test split."""
    from sklearn.datasets import fetch_lfw_people

    root_dir = abs_dir(root)
    home = root_dir / "lfw_home"
    meta_files = ("pairsDevTrain.txt", "pairsDevTest.txt", "pairs.txt")
    expected = [
        "lfw_funneled/<Person_Name>/<Person_Name>_0001.jpg ...  (from lfw-funneled.tgz, ~230 MB)",
        *[f"{f}  (LFW metadata)" for f in meta_files],
    ]
    override = root_override("lfw_home")
    ready = (home / "lfw_funneled").is_dir() and all((home / f).is_file() for f in meta_files)
    if not ready and not download:
        raise unavailable(
            "lfw",
            home,
            expected,
            _lfw_urls(),
            "the files are missing and downloading is off (download=False / data.download=false)",
            override,
        )
    try:
        bunch = fetch_lfw_people(
            data_home=str(root_dir),
            funneled=True,
            resize=None,
            min_faces_per_person=int(min_faces_per_person),
            color=not grayscale,
            download_if_missing=download,
        )
    except Exception as exc:
        raise unavailable(
            "lfw",
            home,
            expected,
            _lfw_urls(),
            f"download or loading failed ({type(exc).__name__}: {exc})",
            override,
        ) from exc
    if len(bunch.target_names) < 2:
        raise ValueError(f"lfw: only {len(bunch.target_names)} people have >= {min_faces_per_person} images")
    x = images_to_float(
        bunch.images, HALF, HALF, channels_last=not grayscale, size=image_size, crop_square=True
    )
    return RawDataset(
        name="lfw",
        train=ArrayData(x, _labels(bunch.target)),
        test=None,
        num_classes=len(bunch.target_names),
        meta=_meta("image", HALF, HALF, classes=[str(n) for n in bunch.target_names]),
    )


# ==========================================================================================================
# public archives outside torchvision
# ==========================================================================================================

# CINIC-10: URL from the BayesWatch/cinic-10 README (the second is the current Edinburgh DataShare host).
# md5 6ee4d0c996905fe93221de577967a372 is hard-coded for CINIC-10.tar.gz by independent public loaders
# (e.g. a torchvision-style CINIC10 VisionDataset with `tgz_md5`, and another with `file_md5`).
CINIC10_ARCHIVE = Archive(
    filename="CINIC-10.tar.gz",
    urls=(
        "https://datashare.is.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz",
        "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz",
    ),
    md5="6ee4d0c996905fe93221de577967a372",
)
CINIC10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Purchase-100 / Texas-100 (Shokri et al. 2017) as distributed for ML Privacy Meter: the NUS URL is the one
# privacytrustlab/ml_privacy_meter downloads; the GitHub copy lives in privacytrustlab/datasets.
# checksum not published; integrity is checked by extraction plus the exact column counts (600 / 6169
# binary features) and the 1..100 label range instead.
PURCHASE100_ARCHIVE = Archive(
    filename="dataset_purchase.tgz",
    urls=(
        "https://www.comp.nus.edu.sg/~reza/files/dataset_purchase.tgz",
        "https://github.com/privacytrustlab/datasets/raw/master/dataset_purchase.tgz",
    ),
    md5=None,
)
# checksum not published; see PURCHASE100_ARCHIVE.
TEXAS100_ARCHIVE = Archive(
    filename="dataset_texas.tgz",
    urls=(
        "https://www.comp.nus.edu.sg/~reza/files/dataset_texas.tgz",
        "https://github.com/privacytrustlab/datasets/raw/master/dataset_texas.tgz",
    ),
    md5=None,
)

_CACHE_PREFIX = "mia_bench_cache"


def _save_cache(path: Path, **arrays) -> None:
    """Best effort (read-only data dirs are fine): write atomically so a killed run leaves no half file."""
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write cache %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


def _find_cinic(base: Path) -> Path | None:
    for cand in (base / "cinic10", base / "cinic10" / "CINIC-10", base / "CINIC-10", base / "CINIC10", base):
        if all((cand / split / "airplane").is_dir() for split in ("train", "valid", "test")):
            return cand
    return None


def _cinic_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    cache = data_dir / f"{_CACHE_PREFIX}_{split}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                return z["x"], z["y"]
        except Exception as exc:  # unreadable cache: rebuild it
            log.warning("ignoring unreadable cache %s: %s", cache, exc)
    files, labels, _ = list_image_folder(data_dir / split, classes=CINIC10_CLASSES)
    if not files:
        raise FileNotFoundError(f"no PNG files under {data_dir / split}")
    log.info("decoding %d CINIC-10 %s images (cached afterwards in %s)", len(files), split, cache)
    x = read_images(files, image_size=32, grayscale=False)  # a few CINIC images are grayscale: -> RGB
    y = np.asarray(labels, dtype=np.int64)
    _save_cache(cache, x=x, y=y)
    return x, y


@register_dataset("cinic10")
def cinic10(root: str, download: bool = True, include_valid: bool = False) -> RawDataset:
    """CINIC-10 (90k train [+ 90k valid] / 90k test, ``[N, 3, 32, 32]``) from the public tarball, under
    ``<root>/cinic10/{train,valid,test}/<class>/*.png``. Decoded PNGs are cached next to them as npz."""
    base = abs_dir(root)
    directory = base / "cinic10"
    expected = [
        f"{split}/<class>/*.png  (<class> in {', '.join(CINIC10_CLASSES)})"
        for split in ("train", "valid", "test")
    ]
    override = root_override("cinic10")
    fetch_and_extract(
        "cinic10",
        CINIC10_ARCHIVE,
        directory,
        download,
        expected,
        override,
        lambda: _find_cinic(base) is not None,
    )
    data_dir = _find_cinic(base)
    assert data_dir is not None
    try:
        parts = [_cinic_split(data_dir, s) for s in (("train", "valid") if include_valid else ("train",))]
        xs, ys = [p[0] for p in parts], [p[1] for p in parts]
        x_te, y_te = _cinic_split(data_dir, "test")
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise unavailable(
            "cinic10", data_dir, expected, CINIC10_ARCHIVE.urls, f"cannot read the images ({exc})", override
        ) from exc
    mean, std = CINIC10_NORM
    return RawDataset(
        name="cinic10",
        train=ArrayData(
            images_to_float(np.concatenate(xs), mean, std, channels_last=True), _labels(np.concatenate(ys))
        ),
        test=ArrayData(images_to_float(x_te, mean, std, channels_last=True), _labels(y_te)),
        num_classes=10,
        meta=_meta("image", mean, std, classes=list(CINIC10_CLASSES), include_valid=bool(include_valid)),
    )


def _read_csv(path: Path) -> np.ndarray:
    """Comma-separated integer matrix; uint8 when it fits (binary features), float32 otherwise."""
    import pandas as pd

    try:
        return pd.read_csv(path, header=None, dtype=np.uint8, engine="c").to_numpy()
    except (ValueError, OverflowError):
        return pd.read_csv(path, header=None, dtype=np.float32, engine="c").to_numpy()


def _tabular_labels(raw: np.ndarray, source: Path, fail) -> np.ndarray:
    """The Shokri et al. files store labels 1..100; return 0..99 (fixed offset, not a data-driven remap)."""
    y = np.asarray(raw).astype(np.int64).ravel() - 1
    if y.size and (y.min() < 0 or y.max() > 99):
        raise fail(
            f"{source} has labels outside 1..100 (min {y.min() + 1}, max {y.max() + 1}): unexpected format"
        )
    return y


def _tabular(name: str, x: np.ndarray, y: np.ndarray, directory: Path) -> RawDataset:
    return RawDataset(
        name=name,
        train=ArrayData(torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32), torch.from_numpy(y)),
        test=None,
        num_classes=100,
        meta=_meta("tabular", features="binary", source=str(directory)),
    )


def _load_cached(cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as z:
            return z["x"], z["y"]
    except Exception as exc:
        log.warning("ignoring unreadable cache %s: %s", cache, exc)
        return None


@register_dataset("purchase100")
def purchase100(root: str, download: bool = True) -> RawDataset:
    """Purchase-100 (197,324 records, 600 binary features, 100 classes), under ``<root>/purchase100``.
    The parsed CSV is cached there as ``purchase100.npz``. No official test split."""
    directory = abs_dir(root) / "purchase100"
    cache = directory / f"{_CACHE_PREFIX}_purchase100.npz"
    expected = ["dataset_purchase  (CSV: label 1..100, then 600 binary features per line)"]
    override = root_override("purchase100")

    def find() -> Path | None:
        direct = directory / "dataset_purchase"
        if direct.is_file():
            return direct
        return next((p for p in sorted(directory.rglob("dataset_purchase")) if p.is_file()), None)

    def fail(reason: str) -> DatasetUnavailableError:
        return unavailable("purchase100", directory, expected, PURCHASE100_ARCHIVE.urls, reason, override)

    cached = _load_cached(cache)
    if cached is None:
        fetch_and_extract(
            "purchase100",
            PURCHASE100_ARCHIVE,
            directory,
            download,
            expected,
            override,
            lambda: directory.is_dir() and find() is not None,
        )
        source = find()
        table = _read_csv(source)
        if table.ndim != 2 or table.shape[1] != 601:
            raise fail(f"{source} has {table.shape[-1]} columns, expected 601 (label + 600 features)")
        cached = (table[:, 1:], _tabular_labels(table[:, 0], source, fail))
        _save_cache(cache, x=cached[0], y=cached[1])
    return _tabular("purchase100", cached[0], cached[1], directory)


@register_dataset("texas100")
def texas100(root: str, download: bool = True) -> RawDataset:
    """Texas-100 (67,330 records, 6169 binary features, 100 classes), under ``<root>/texas100``
    (``texas/100/feats`` + ``texas/100/labels`` from the archive). Cached as npz. No official test split."""
    directory = abs_dir(root) / "texas100"
    cache = directory / f"{_CACHE_PREFIX}_texas100.npz"
    expected = [
        "texas/100/feats  (CSV: 6169 binary features per line)",
        "texas/100/labels  (one label 1..100 per line)",
    ]
    override = root_override("texas100")

    def find() -> tuple[Path, Path] | None:
        candidates = [directory / "texas" / "100" / "feats", directory / "dataset_texas" / "feats"]
        candidates += sorted(directory.rglob("feats"), key=lambda p: (p.parent.name != "100", str(p)))
        for feats in candidates:
            labels = feats.with_name("labels")
            if feats.is_file() and labels.is_file():
                return feats, labels
        return None

    def fail(reason: str) -> DatasetUnavailableError:
        return unavailable("texas100", directory, expected, TEXAS100_ARCHIVE.urls, reason, override)

    cached = _load_cached(cache)
    if cached is None:
        fetch_and_extract(
            "texas100",
            TEXAS100_ARCHIVE,
            directory,
            download,
            expected,
            override,
            lambda: directory.is_dir() and find() is not None,
        )
        feats_path, labels_path = find()
        x = _read_csv(feats_path)
        y = _tabular_labels(_read_csv(labels_path), labels_path, fail)
        if x.ndim != 2 or x.shape[1] != 6169:
            raise fail(f"{feats_path} has {x.shape[-1]} columns, expected 6169 features")
        if x.shape[0] != y.shape[0]:
            raise fail(f"{feats_path} has {x.shape[0]} rows but {labels_path} has {y.shape[0]} labels")
        cached = (x, y)
        _save_cache(cache, x=x, y=y)
    return _tabular("texas100", cached[0], cached[1], directory)


# ==========================================================================================================
# user data
# ==========================================================================================================


@register_dataset("image_folder")
def image_folder(
    path: str,
    image_size: int | None = None,
    grayscale: bool = False,
    test_path: str | None = None,
) -> RawDataset:
    """Class-per-subdirectory images (like torchvision's ImageFolder; classes sorted by folder name).

    ``image_size`` resizes every image to a square (``None`` keeps them; they must then share one size),
    ``grayscale`` gives 1 channel instead of RGB. Pixels/255 then (x-0.5)/0.5. ``test_path`` optionally
    names a second tree (same class folders) used as the official test split; otherwise ``test=None``.
    """
    override = "dataset.loader.path=/path/to/images (one sub-folder per class)"
    expected = ["<class_name>/<image>.{png,jpg,jpeg,bmp,...}  (one sub-folder per class, sorted by name)"]

    def read(folder: str, classes=None, size=image_size):
        directory = abs_dir(folder)
        if not directory.is_dir():
            raise unavailable(
                "image_folder", directory, expected, [], "the directory does not exist", override
            )
        files, labels, classes = list_image_folder(directory, classes)
        if not files:
            raise unavailable("image_folder", directory, expected, [], "no image files found", override)
        return read_images(files, size, grayscale), np.asarray(labels, dtype=np.int64), classes

    x, y, classes = read(path)
    test = None
    if test_path is not None:
        x_te, y_te, _ = read(test_path, classes, image_size or x.shape[1])
        if x_te.shape[1:] != x.shape[1:]:
            raise ValueError(f"test images are {x_te.shape[1:]} but train images are {x.shape[1:]}")
        test = ArrayData(images_to_float(x_te, HALF, HALF, channels_last=True), _labels(y_te))
    return RawDataset(
        name="image_folder",
        train=ArrayData(images_to_float(x, HALF, HALF, channels_last=True), _labels(y)),
        test=test,
        num_classes=len(classes),
        meta=_meta("image", HALF, HALF, classes=classes),
    )


def _user_arrays(
    name: str, x: np.ndarray, y: np.ndarray, x_te: np.ndarray | None, y_te: np.ndarray | None, meta: dict
) -> RawDataset:
    for xa, ya, split in ((x, y, "train"), (x_te, y_te, "test")):
        if xa is not None and xa.shape[0] != ya.shape[0]:
            raise ValueError(
                f"{name}: {split} inputs have {xa.shape[0]} records but labels have {ya.shape[0]}"
            )
    (y, y_te), values, remapped = remap_labels(y, y_te)
    if remapped:
        meta["label_values"] = values  # original label of class i is label_values[i]
    tx = array_to_x(x)
    return RawDataset(
        name=name,
        train=ArrayData(tx, _labels(y)),
        test=None if x_te is None else ArrayData(array_to_x(x_te), _labels(y_te)),
        num_classes=len(values),
        meta=_meta("image" if tx.dim() == 4 else "tabular", **meta),
    )


@register_dataset("idx")
def idx(
    path: str | None = None,
    images: str | None = None,
    labels: str | None = None,
    test_images: str | None = None,
    test_labels: str | None = None,
) -> RawDataset:
    """IDX files (the MNIST format, plain or ``.gz``).

    ``path`` is a directory holding ``*images-idx3-ubyte[.gz]`` / ``*labels-idx1-ubyte[.gz]`` pairs: one
    pair -> population with ``test=None``; a ``train-*`` and a ``t10k-*``/``test-*`` pair -> train and the
    official test split. Alternatively name the files with ``images``/``labels`` (and optionally
    ``test_images``/``test_labels``), relative to ``path`` if given. uint8 pixels/255 then (x-0.5)/0.5;
    labels are remapped to 0..C-1 if they are not already.
    """
    override = (
        "dataset.loader.path=/dir/with/idx/files (or dataset.loader.images=... dataset.loader.labels=...)"
    )
    expected = [
        "<prefix>images-idx3-ubyte[.gz] + <prefix>labels-idx1-ubyte[.gz]  (one pair: population, test=None)",
        "or train-images/labels-* and t10k-images/labels-* pairs  (train -> population, t10k -> test split)",
    ]
    base = abs_dir(path) if path is not None else None

    def resolve(p: str) -> Path:
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() or base is None else base / q

    if images or labels or test_images or test_labels:
        if not (images and labels) or bool(test_images) != bool(test_labels):
            raise ValueError("idx: give images= and labels= together (and test_images= with test_labels=)")
        pairs = [(resolve(images), resolve(labels))]
        if test_images:
            pairs.append((resolve(test_images), resolve(test_labels)))
        missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
        if missing:
            raise unavailable(
                "idx",
                pairs[0][0].parent,
                [str(p) for pair in pairs for p in pair],
                [],
                f"missing file(s): {', '.join(missing)}",
                override,
            )
    else:
        if base is None:
            raise ValueError("idx needs path= (a directory of IDX files) or images= and labels=")
        if not base.is_dir():
            raise unavailable("idx", base, expected, [], "the directory does not exist", override)
        try:
            found = find_idx_pairs(base)
        except FileNotFoundError as exc:
            raise unavailable("idx", base, expected, [], str(exc), override) from exc
        if not found:
            raise unavailable("idx", base, expected, [], "no IDX images/labels files found", override)
        roles = sorted(role for role, _, _ in found)
        if len(found) == 1:
            pairs = [found[0][1:]]
        elif roles == ["test", "train"]:
            pairs = [
                next(p[1:] for p in found if p[0] == "train"),
                next(p[1:] for p in found if p[0] == "test"),
            ]
        else:
            listing = "; ".join(f"{i.name} + {lb.name}" for _, i, lb in found)
            raise ValueError(
                f"idx: {base} holds {len(found)} IDX pairs ({listing}); expected one pair or one train + one "
                "t10k/test pair. Choose with dataset.loader.images=... dataset.loader.labels=..."
            )
    arrays = [(read_idx(i), labels_1d(read_idx(lb))) for i, lb in pairs]
    (x, y), (x_te, y_te) = arrays[0], (arrays[1] if len(arrays) > 1 else (None, None))
    meta = {"files": [str(p) for pair in pairs for p in pair]}
    if x.dtype == np.uint8 and x.ndim >= 3:
        meta.update(normalization={"mean": list(HALF), "std": list(HALF)})
    return _user_arrays("idx", x, y, x_te, y_te, meta)


@register_dataset("npz")
def npz(
    path: str,
    x_key: str = "x",
    y_key: str = "y",
    x_test_key: str | None = None,
    y_test_key: str | None = None,
) -> RawDataset:
    """Arrays from a ``.npz`` file: inputs ``[N, D]`` (tabular, cast as is) or images ``[N, H, W]`` /
    ``[N, H, W, C]`` / ``[N, C, H, W]`` (uint8 pixels/255 then (x-0.5)/0.5); labels ``[N]`` or one-hot,
    remapped to 0..C-1 if they are not contiguous. ``x_test_key``/``y_test_key`` name an official test
    split."""
    file = abs_dir(path)
    override = "dataset.loader.path=/path/to/data.npz"
    keys = [k for k in (x_key, y_key, x_test_key, y_test_key) if k]
    if not file.is_file():
        raise unavailable(
            "npz",
            file.parent,
            [f"{file.name}  (arrays: {', '.join(keys)})"],
            [],
            "the file does not exist",
            override,
        )
    if bool(x_test_key) != bool(y_test_key):
        raise ValueError("npz: give x_test_key and y_test_key together")
    with np.load(file, allow_pickle=False) as z:
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise ValueError(f"npz: {file} has no array(s) {missing}; it holds {z.files}")
        x, y = z[x_key], labels_1d(z[y_key])
        x_te = z[x_test_key] if x_test_key else None
        y_te = labels_1d(z[y_test_key]) if y_test_key else None
    meta = {"file": str(file)}
    if x.dtype == np.uint8 and x.ndim >= 3:
        meta.update(normalization={"mean": list(HALF), "std": list(HALF)})
    return _user_arrays("npz", x, y, x_te, y_te, meta)
