"""Readers for on-disk formats (IDX, image folders, npz, CSV) and array -> tensor conversion.

Everything here is vectorised where the format allows it: IDX and npz are read in one shot with numpy;
image folders must decode one file at a time (PIL) but are stacked into a single uint8 array before any
float conversion. Normalisation always uses fixed constants passed in by the caller.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from collections.abc import Sequence
from math import prod
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------
# array -> normalised tensor
# ----------------------------------------------------------------------------------------------------------

HALF = (0.5,)  # (x - 0.5) / 0.5 maps [0, 1] pixels to [-1, 1]


def images_to_float(
    data: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = False,
    size: int | None = None,
    crop_square: bool = False,
    chunk: int = 2048,
) -> torch.Tensor:
    """Pixels -> float32 ``[N, C, H, W]``, scaled to [0, 1] then ``(x - mean) / std`` per channel.

    ``data`` is ``[N, H, W]`` (one channel), ``[N, H, W, C]`` (``channels_last``) or ``[N, C, H, W]``;
    uint8 is divided by 255, floats are taken to be in [0, 1] already. ``crop_square`` centre-crops to a
    square first; ``size`` resizes (bilinear, antialiased) to ``size x size``. Works in chunks so the
    float copy is the only full-size allocation.
    """
    t = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif channels_last:
        t = t.permute(0, 3, 1, 2)
    if t.dim() != 4:
        raise ValueError(f"expected images of 3 or 4 dims, got shape {tuple(t.shape)}")
    scale = 255.0 if t.dtype == torch.uint8 else 1.0
    n, c, h, w = t.shape
    if crop_square and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        t = t[:, :, top : top + side, left : left + side]
        h = w = side
    oh, ow = (size, size) if size else (h, w)
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    if mean_t.shape[1] not in (1, c) or std_t.shape[1] not in (1, c):
        raise ValueError(f"normalisation constants have {mean_t.shape[1]} channels, images have {c}")
    out = torch.empty((n, c, oh, ow), dtype=torch.float32)
    for start in range(0, n, chunk):
        block = t[start : start + chunk].to(torch.float32) / scale  # never in place: t may alias input
        if (oh, ow) != (h, w):
            block = F.interpolate(block, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)
            block.clamp_(0.0, 1.0)
        out[start : start + chunk] = (block - mean_t) / std_t
    return out


def array_to_x(arr: np.ndarray) -> torch.Tensor:
    """User arrays (npz/IDX) -> float32 tensor.

    2-D arrays are tabular ``[N, D]`` and cast as they are. 3-D arrays are single-channel images
    ``[N, H, W]``; 4-D arrays are images, channels-last when the last axis has 1/3/4 entries and the
    second does not. uint8 images get pixels/255 then (x-0.5)/0.5; other image dtypes are cast as they are.
    """
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if arr.ndim not in (3, 4):
        raise ValueError(f"inputs must be [N, D], [N, H, W] or 4-D images; got shape {arr.shape}")
    channels_last = arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4)
    if arr.dtype == np.uint8:
        return images_to_float(arr, HALF, HALF, channels_last=channels_last)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if t.dim() == 3:
        return t.unsqueeze(1)
    return t.permute(0, 3, 1, 2).contiguous() if channels_last else t


def labels_1d(y: np.ndarray) -> np.ndarray:
    """Accept ``[N]``, ``[N, 1]`` or one-hot ``[N, C]`` labels."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        return y[:, 0]
    if y.ndim == 2:
        return y.argmax(axis=1)
    if y.ndim != 1:
        raise ValueError(f"labels must be [N], [N, 1] or one-hot [N, C]; got shape {y.shape}")
    return y


def remap_labels(*ys: np.ndarray | None) -> tuple[list[np.ndarray | None], list, bool]:
    """Map the union of label values of all given splits to ``0..C-1`` (sorted order).

    Returns the remapped arrays, the original sorted label values, and whether anything changed.
    """
    present = [y for y in ys if y is not None]
    values = np.unique(np.concatenate([np.asarray(y).ravel() for y in present]))
    identity = np.issubdtype(values.dtype, np.integer) and np.array_equal(values, np.arange(len(values)))
    out: list[np.ndarray | None] = []
    for y in ys:
        if y is None:
            out.append(None)
        elif identity:
            out.append(np.asarray(y, dtype=np.int64))
        else:
            out.append(np.searchsorted(values, y).astype(np.int64))
    return out, values.tolist(), not identity


def _examples(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(map(str, values[:limit].tolist()))
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def class_labels(name: str, *ys: np.ndarray | None) -> list[np.ndarray | None]:
    """The label arrays as int64 classes ``0..C-1``, or an error naming the offending values: labels must be whole
    numbers (NaN, negative or fractional ones are errors, not classes), and together cover ``0..C-1``. Other label
    values (strings, sparse codes) need the loader's ``remap_labels=true``, which maps them to ``0..C-1``."""
    present = [np.asarray(y) for y in ys if y is not None]
    remap = "; if these are class codes, map them to 0..C-1 with dataset.loader.remap_labels=true"
    if any(not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating) for y in present):
        kinds = sorted({str(y.dtype) for y in present})
        raise ValueError(f"{name}: labels of dtype {kinds} are not class numbers{remap}")
    values = np.unique(np.concatenate([y.ravel() for y in present]))
    bad = values[~np.isfinite(values) | (values < 0) | (values != np.round(values))] if values.size else values
    if bad.size:
        raise ValueError(f"{name}: labels must be whole numbers 0..C-1; found {_examples(bad)}")
    if not np.array_equal(values, np.arange(len(values))):
        missing = np.setdiff1d(np.arange(int(values.max()) + 1), values)
        raise ValueError(f"{name}: labels {_examples(values)} are not the classes 0..{len(values) - 1} (no records "
                         f"of {_examples(missing)}){remap}")
    return [None if y is None else np.asarray(y).astype(np.int64) for y in ys]


# ----------------------------------------------------------------------------------------------------------
# IDX (the MNIST file format)
# ----------------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_IMAGES = re.compile(r"^(?P<prefix>.*)images[-.]idx(?P<ndim>\d)-ubyte(?P<gz>\.gz)?$")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array in one shot."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # gzip names no file; a truncated copy is common
        raise ValueError(f"{path}: damaged gzip file ({type(err).__name__}: {err}); download or copy it again") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:offset])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = prod(dims)
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(
            f"{path}: truncated IDX file (header says {dims}, {len(data) - offset} bytes of data)"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def find_idx_pairs(directory: Path) -> list[tuple[str, Path, Path]]:
    """``(role, images, labels)`` for each IDX images file in ``directory`` that has a labels partner.

    role is ``"train"``, ``"test"`` (prefix contains t10k/test) or ``"unknown"``. A plain file wins over
    its ``.gz`` twin. Raises ``FileNotFoundError`` for an images file whose labels file is missing.
    """
    found: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        m = _IDX_IMAGES.match(p.name)
        if m and p.is_file():
            key = p.name[:-3] if m.group("gz") else p.name
            if key not in found or not m.group("gz"):
                found[key] = p
    pairs = []
    for _, images in sorted(found.items()):
        m = _IDX_IMAGES.match(images.name)
        prefix = m.group("prefix")
        candidates = [
            directory / f"{prefix}labels{sep}idx1-ubyte{gz}" for sep in ("-", ".") for gz in ("", ".gz")
        ]
        labels = next((c for c in candidates if c.is_file()), None)
        if labels is None:
            raise FileNotFoundError(
                f"{images} has no labels partner: expected one of {', '.join(c.name for c in candidates)}"
            )
        low = prefix.lower()
        role = "test" if ("t10k" in low or "test" in low) else "train" if "train" in low else "unknown"
        pairs.append((role, images, labels))
    return pairs


# ----------------------------------------------------------------------------------------------------------
# image folders (class-per-subdirectory)
# ----------------------------------------------------------------------------------------------------------

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_image_folder(
    path: Path, classes: Sequence[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of a class-per-subdirectory tree; classes sorted by name unless given."""
    if classes is None:
        classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    else:
        unknown = sorted(
            d.name
            for d in path.iterdir()
            if d.is_dir() and not d.name.startswith(".") and d.name not in classes
        )
        if unknown:
            raise ValueError(f"{path} has class folders {unknown} that are not among {list(classes)}")
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = path / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in IMG_EXTENSIONS and p.is_file():
                files.append(p)
                labels.append(index)
    return files, labels, list(classes)


def decode_image(source, image_size: int | None, mode: str = "RGB") -> np.ndarray:
    """One image file (a path or a file object) as uint8 ``[H, W]`` or ``[H, W, C]``, resized (bilinear) to
    ``image_size x image_size`` if given."""
    from PIL import Image

    with Image.open(source) as img:
        img = img.convert(mode)
        if image_size is not None and img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def check_same_size(a: np.ndarray, shape: tuple | None, where: str, hint: str) -> tuple:
    """The shape every image of a set must have: the first one's; a different one raises, naming ``where``."""
    if shape is not None and a.shape != shape:
        raise ValueError(f"{where} is {a.shape[1]}x{a.shape[0]} but earlier images are {shape[1]}x{shape[0]}: "
                         f"set {hint} to resize them all")
    return a.shape


def read_images(files: Sequence[Path], image_size: int | None, grayscale: bool) -> np.ndarray:
    """Decode image files into one uint8 array ``[N, H, W, C]`` (resized to ``image_size`` if given)."""
    arrays = []
    shape = None
    for p in files:
        a = decode_image(p, image_size, "L" if grayscale else "RGB")
        shape = check_same_size(a, shape, str(p), "image_size (e.g. dataset.loader.image_size=32)")
        arrays.append(a)
    if not arrays:
        raise ValueError("no images to read")
    out = np.stack(arrays)
    return out[..., None] if out.ndim == 3 else out
