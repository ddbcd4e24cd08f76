"""Loaders for the user's own data: class-per-folder images (``image_folder``), IDX files (``idx``, the MNIST
format) and ``.npz`` arrays (``npz``). There is nothing to download, so a missing path raises
:class:`~mia_bench.data.base.DatasetUnavailableError` naming the config override to set; labels that are not
``0..C-1`` are an error naming them unless the loader's ``remap_labels=true`` asks for a mapping (the original
values are then kept in ``meta["label_values"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mia_bench.data.base import ArrayData, RawDataset, as_labels, dataset_meta
from mia_bench.data.downloads import abs_dir, unavailable
from mia_bench.data.files import (
    HALF,
    array_to_x,
    class_labels,
    find_idx_pairs,
    images_to_float,
    labels_1d,
    list_image_folder,
    read_idx,
    read_images,
    remap_labels,
)
from mia_bench.data.registry import register_dataset


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
        test = ArrayData(images_to_float(x_te, HALF, HALF, channels_last=True), as_labels(y_te))
    return RawDataset(
        name="image_folder",
        train=ArrayData(images_to_float(x, HALF, HALF, channels_last=True), as_labels(y)),
        test=test,
        num_classes=len(classes),
        meta=dataset_meta("image", HALF, HALF, classes=classes),
    )


def _user_arrays(
    name: str, x: np.ndarray, y: np.ndarray, x_te: np.ndarray | None, y_te: np.ndarray | None, meta: dict,
    remap: bool = False,
) -> RawDataset:
    for xa, ya, split in ((x, y, "train"), (x_te, y_te, "test")):
        if xa is not None and xa.shape[0] != ya.shape[0]:
            raise ValueError(
                f"{name}: {split} inputs have {xa.shape[0]} records but labels have {ya.shape[0]}"
            )
    if remap:
        (y, y_te), values, remapped = remap_labels(y, y_te)
        if remapped:
            meta["label_values"] = values  # original label of class i is label_values[i]
    else:
        y, y_te = class_labels(f"{name} ({meta.get('file') or meta.get('files', [''])[0]})", y, y_te)
        values = range(int(max(y.max(), -1 if y_te is None else y_te.max())) + 1)
    tx = array_to_x(x)
    return RawDataset(
        name=name,
        train=ArrayData(tx, as_labels(y)),
        test=None if x_te is None else ArrayData(array_to_x(x_te), as_labels(y_te)),
        num_classes=len(values),
        meta=dataset_meta("image" if tx.dim() == 4 else "tabular", **meta),
    )


@register_dataset("idx")
def idx(
    path: str | None = None,
    images: str | None = None,
    labels: str | None = None,
    test_images: str | None = None,
    test_labels: str | None = None,
    remap_labels: bool = False,
) -> RawDataset:
    """IDX files (the MNIST format, plain or ``.gz``).

    ``path`` is a directory holding ``*images-idx3-ubyte[.gz]`` / ``*labels-idx1-ubyte[.gz]`` pairs: one
    pair -> population with ``test=None``; a ``train-*`` and a ``t10k-*``/``test-*`` pair -> train and the
    official test split. Alternatively name the files with ``images``/``labels`` (and optionally
    ``test_images``/``test_labels``), relative to ``path`` if given. uint8 pixels/255 then (x-0.5)/0.5;
    labels must be whole numbers ``0..C-1`` (``remap_labels=true`` maps any other values to ``0..C-1``).
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
    return _user_arrays("idx", x, y, x_te, y_te, meta, remap_labels)


@register_dataset("npz")
def npz(
    path: str,
    x_key: str = "x",
    y_key: str = "y",
    x_test_key: str | None = None,
    y_test_key: str | None = None,
    remap_labels: bool = False,
) -> RawDataset:
    """Arrays from a ``.npz`` file: inputs ``[N, D]`` (tabular, cast as is) or images ``[N, H, W]`` /
    ``[N, H, W, C]`` / ``[N, C, H, W]`` (uint8 pixels/255 then (x-0.5)/0.5); labels ``[N]`` or one-hot, whole
    numbers ``0..C-1`` (``remap_labels=true`` maps any other values to ``0..C-1``). ``x_test_key``/``y_test_key``
    name an official test split."""
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
    return _user_arrays("npz", x, y, x_te, y_te, meta, remap_labels)
