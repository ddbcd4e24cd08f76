"""Public datasets that torchvision does not provide: Labeled Faces in the Wild (through scikit-learn's fetcher),
CINIC-10 (from its tarball; decoded PNGs cached as npz) and the Shokri et al. tabular sets Purchase-100 and
Texas-100 (CSV parsed once, cached as npz). Archives are fetched and verified by
:func:`~mia_bench.data.downloads.fetch_and_extract`; missing data raises
:class:`~mia_bench.data.base.DatasetUnavailableError` with the directory searched, the files expected and the URLs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from mia_bench.data.base import ArrayData, DatasetUnavailableError, RawDataset, as_labels, dataset_meta
from mia_bench.data.downloads import Archive, abs_dir, fetch_and_extract, root_override, unavailable
from mia_bench.data.files import HALF, images_to_float, list_image_folder, read_images
from mia_bench.data.registry import register_dataset

log = logging.getLogger(__name__)

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
    (scikit-learn's layout). No official test split. scikit-learn caches the decoded faces with joblib (pickle,
    read back unverified) in ``<root>/lfw_home/joblib``: a data root others can write can run code here."""
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
        train=ArrayData(x, as_labels(bunch.target)),
        test=None,
        num_classes=len(bunch.target_names),
        meta=dataset_meta("image", HALF, HALF, classes=[str(n) for n in bunch.target_names]),
    )


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
# From the CINIC-10 README (https://github.com/BayesWatch/cinic-10).
CINIC10_NORM = ((0.47889522, 0.47227842, 0.43047404), (0.24205776, 0.23828046, 0.25874835))

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
            with np.load(cache, allow_pickle=False) as z:
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
            images_to_float(np.concatenate(xs), mean, std, channels_last=True), as_labels(np.concatenate(ys))
        ),
        test=ArrayData(images_to_float(x_te, mean, std, channels_last=True), as_labels(y_te)),
        num_classes=10,
        meta=dataset_meta("image", mean, std, classes=list(CINIC10_CLASSES), include_valid=bool(include_valid)),
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
        meta=dataset_meta("tabular", features="binary", source=str(directory)),
    )


def _load_cached(cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
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
