"""Image datasets that torchvision downloads and parses: MNIST, Fashion-MNIST, CIFAR-10/100 and STL-10 (labeled
splits), each with its official test split and FIXED published per-channel normalisation constants (never
statistics fitted on the records, which would leak membership). All five go through one helper,
:func:`_from_torchvision`; any torchvision failure (missing files, no network, bad checksum) becomes a
:class:`~mia_bench.data.base.DatasetUnavailableError` naming the directory searched, the files expected there,
the download URL and the config override that points at an existing copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mia_bench.data.base import ArrayData, DatasetUnavailableError, RawDataset, as_labels, dataset_meta
from mia_bench.data.downloads import abs_dir, md5_mismatch, root_override, unavailable
from mia_bench.data.files import images_to_float
from mia_bench.data.registry import register_dataset

Norm = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per channel

# Fixed, published per-channel constants (never refitted on a subset of records).
MNIST_NORM = ((0.1307,), (0.3081,))
FASHION_MNIST_NORM = ((0.2860,), (0.3530,))
CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
STL10_NORM = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
# Label order of the local image-tree copies: torchvision's (its CIFAR-100 and STL-10 names are sorted too).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


@dataclass(frozen=True)
class _Layout:
    """Where a torchvision dataset's files live, and what the error for missing files lists."""

    searched: Path
    expected: list[str]
    urls: list[str]
    archives: list[tuple[Path, str | None]]  # (path, md5) of archives whose corruption the error reports
    override: str
    files: list[tuple[Path, str | None]] = ()  # (path, md5 or None) of the extracted files torchvision reads

    def damaged(self) -> list[str]:
        """The archives and extracted files that exist but fail their md5 (or are empty): present, not missing."""
        out = []
        for path, md5 in [*self.archives, *self.files]:
            problem = md5_mismatch(path, md5) or ("it is empty" if path.is_file() and not path.stat().st_size else None)
            if problem:
                out.append(f"{path} ({problem})")
        return out

    def present(self) -> list[Path]:
        return [path for path, _ in self.files if path.exists()]


def _idx_layout(cls: type, root_dir: Path) -> _Layout:
    """MNIST-like: IDX files (or their ``.gz``) in ``<root>/<ClassName>/raw``."""
    raw = root_dir / cls.__name__ / "raw"
    return _Layout(
        searched=raw,
        expected=[f"{os.path.splitext(f)[0]}  (or {f}, md5 {md5})" for f, md5 in cls.resources],
        urls=[cls.mirrors[0] + f for f, _ in cls.resources],
        archives=[(raw / f, md5) for f, md5 in cls.resources],
        override=root_override(f"{cls.__name__}/raw"),
        files=[(raw / os.path.splitext(f)[0], None) for f, _ in cls.resources],  # torchvision keeps no md5 of these
    )


def _tarball_layout(cls: type, root_dir: Path, size_note: str = "") -> _Layout:
    """CIFAR-like: files in ``<root>/<cls.base_folder>``, extracted from the tarball ``<root>/<cls.filename>``."""
    listed = [*cls.train_list, *cls.test_list]
    if hasattr(cls, "meta"):  # CIFAR's label names (STL-10 has none)
        listed.append((cls.meta["filename"], cls.meta["md5"]))
    names = [f for f, _ in listed]
    return _Layout(
        searched=root_dir,
        expected=[f"{cls.base_folder}/{f}" for f in names]
        + [f"(or the archive {cls.filename}, md5 {cls.tgz_md5}{size_note}, extracted automatically)"],
        urls=[cls.url],
        archives=[(root_dir / cls.filename, cls.tgz_md5)],
        override=root_override(cls.base_folder),
        files=[(root_dir / cls.base_folder / f, md5) for f, md5 in listed],
    )


def _torchvision(name: str, layout: _Layout, download: bool, build: Callable[[], object]):
    """Run a torchvision constructor, turning any failure (missing files, no network, bad checksum) into a
    :class:`DatasetUnavailableError` with the full story."""
    try:
        return build()
    except DatasetUnavailableError:
        raise
    except Exception as exc:
        corrupted = layout.damaged()
        if download:
            reason = f"download failed or the files are unusable ({type(exc).__name__}: {exc})"
        elif corrupted or layout.present():
            absent = [str(path) for path, _ in layout.files if not path.exists()]
            reason = (f"{len(absent)} of the {len(layout.files)} files are missing ({', '.join(absent)})" if absent
                      else f"the files are there but cannot be read ({type(exc).__name__}: {exc})")
        else:
            reason = (
                f"the files are missing and downloading is off (download=False / data.download=false) [{exc}]"
            )
        if corrupted:
            reason += "; corrupted or partial file(s): " + "; ".join(corrupted) + " -- delete them and retry"
        raise unavailable(name, layout.searched, layout.expected, layout.urls, reason, layout.override) from exc


def _from_torchvision(
    name: str,
    cls: type,
    root: str,
    download: bool,
    norm: Norm,
    layout: Callable[[type, Path], _Layout],
    channels_last: bool = False,
    splits: Sequence[dict] = ({"train": True}, {"train": False}),
    size: int | None = None,
) -> RawDataset:
    """Train and official test split of torchvision dataset class ``cls`` under ``root``.

    ``layout`` lists the files for the error message, ``channels_last`` says whether ``cls.data`` is
    ``[N, H, W, C]`` (CIFAR) rather than ``[N, H, W]`` / ``[N, C, H, W]``, ``splits`` are the constructor
    arguments selecting the train and the test split, ``size`` resizes (antialiased). Only the train split
    is downloaded: torchvision fetches both with it.
    """
    root_dir = abs_dir(root)
    files = layout(cls, root_dir)

    def build(split: dict, dl: bool):
        return _torchvision(name, files, dl, lambda: cls(str(root_dir), download=dl, **split))

    tr, te = build(splits[0], download), build(splits[1], False)
    mean, std = norm

    def arrays(d) -> ArrayData:
        y = d.targets if hasattr(d, "targets") else d.labels  # STL-10 calls them labels
        return ArrayData(images_to_float(d.data, mean, std, channels_last=channels_last, size=size), as_labels(y))

    return RawDataset(
        name=name,
        train=arrays(tr),
        test=arrays(te),
        num_classes=len(tr.classes),
        meta=dataset_meta("image", mean, std, classes=list(tr.classes)),
    )


def _from_image_tree(
    name: str, path: str, root: str, norm: Norm, classes, shape, image_size: int | None = None
) -> RawDataset:
    """Train and test split of a local copy as an image tree (folder or archive; see :mod:`.image_tree`), with the
    same normalisation as the torchvision path, so the splits, public split and augmentations are the same too."""
    from mia_bench.data.image_tree import read_image_tree

    tree = read_image_tree(name, path, abs_dir(root) / "decoded", classes, shape, image_size)
    mean, std = norm

    def arrays(split: str) -> ArrayData:
        return ArrayData(images_to_float(tree.x[split], mean, std, channels_last=True), as_labels(tree.y[split]))

    return RawDataset(name=name, train=arrays("train"), test=arrays("test"), num_classes=len(tree.classes),
                      meta=dataset_meta("image", mean, std, classes=tree.classes))


@register_dataset("mnist")
def mnist(root: str, download: bool = True) -> RawDataset:
    """MNIST (60k train / 10k test, ``[N, 1, 28, 28]``) via torchvision, under ``<root>/MNIST/raw``."""
    import torchvision.datasets as tvd

    return _from_torchvision("mnist", tvd.MNIST, root, download, MNIST_NORM, _idx_layout)


@register_dataset("fashion_mnist")
def fashion_mnist(root: str, download: bool = True) -> RawDataset:
    """Fashion-MNIST (60k / 10k, ``[N, 1, 28, 28]``) via torchvision, under ``<root>/FashionMNIST/raw``."""
    import torchvision.datasets as tvd

    return _from_torchvision("fashion_mnist", tvd.FashionMNIST, root, download, FASHION_MNIST_NORM, _idx_layout)


@register_dataset("cifar10")
def cifar10(root: str, download: bool = True, path: str | None = None) -> RawDataset:
    """CIFAR-10 (50k train / 10k test, ``[N, 3, 32, 32]``) via torchvision, in ``<root>/cifar-10-batches-py``; or,
    with ``path``, a local copy as ``train/<class>/*`` and ``test/<class>/*`` image files, a folder or an archive
    (decoded once, kept under ``<root>/decoded``)."""
    import torchvision.datasets as tvd

    if path is not None:
        return _from_image_tree("cifar10", path, root, CIFAR10_NORM, CIFAR10_CLASSES, (32, 32, 3))
    return _from_torchvision(
        "cifar10", tvd.CIFAR10, root, download, CIFAR10_NORM, _tarball_layout, channels_last=True
    )


@register_dataset("cifar100")
def cifar100(root: str, download: bool = True, path: str | None = None) -> RawDataset:
    """CIFAR-100 (50k / 10k, 100 fine classes) via torchvision, under ``<root>/cifar-100-python``; or, with ``path``,
    a local image-tree copy as for :func:`cifar10` (100 class folders, their sorted names being torchvision's
    order)."""
    import torchvision.datasets as tvd

    if path is not None:
        return _from_image_tree("cifar100", path, root, CIFAR100_NORM, 100, (32, 32, 3))
    return _from_torchvision(
        "cifar100", tvd.CIFAR100, root, download, CIFAR100_NORM, _tarball_layout, channels_last=True
    )


@register_dataset("stl10")
def stl10(root: str, download: bool = True, image_size: int = 96, path: str | None = None) -> RawDataset:
    """STL-10 labeled splits (5k train / 8k test, ``[N, 3, 96, 96]``; ``image_size`` resizes, antialiased)
    via torchvision, under ``<root>/stl10_binary``. The unlabeled split is not used (but is part of the
    archive torchvision verifies). With ``path``: a local image-tree copy of the labeled splits, as for
    :func:`cifar10` (resized bilinearly while decoding when ``image_size`` is not 96)."""
    import torchvision.datasets as tvd

    if path is not None:
        side = 96 if image_size in (None, 96) else int(image_size)
        return _from_image_tree("stl10", path, root, STL10_NORM, STL10_CLASSES, (side, side, 3),
                                None if side == 96 else side)
    return _from_torchvision(
        "stl10",
        tvd.STL10,
        root,
        download,
        STL10_NORM,
        lambda cls, root_dir: _tarball_layout(cls, root_dir, size_note=", ~2.6 GB"),
        splits=({"split": "train"}, {"split": "test"}),
        size=None if image_size in (None, 96) else int(image_size),
    )
