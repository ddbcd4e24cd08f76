"""A local copy of an image dataset as a tree of image files, ``[<top>/]{train,test}/<class>/<image>``, as a folder or
as a tar archive of one (the CIFAR-10 JPEG copy is such a tarball), decoded once and kept as uint8 arrays.

Decoding 60,000 small JPEGs costs seconds on every run, so the decoded arrays are stored (uncompressed npz, written
atomically) under ``<data.root>/decoded/``, named by a digest of the source: the tarball's bytes, or the folder's file
names, sizes and modification times. The arrays carry a sha256 of their own bytes, checked on every load: a damaged
store is decoded again, never used. Records are ordered by split, class and file name, whatever order the archive
lists them in, so a copy means the same records on every machine.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mia_bench.data.base import DatasetUnavailableError
from mia_bench.data.downloads import abs_dir, unavailable
from mia_bench.data.files import IMG_EXTENSIONS, check_same_size, decode_image

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
_MEMBER = re.compile(r"^(?:.*/)?(?P<split>train|test)/(?P<cls>[^/]+)/(?P<file>[^/]+)$")
STORE_VERSION = 1  # bump when the stored arrays' meaning changes


@dataclass(frozen=True)
class DecodedTree:
    """The images of a local copy as uint8 ``[N, H, W, C]`` and int64 labels per split, and the class names."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    classes: list[str]


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMG_EXTENSIONS and not os.path.basename(name).startswith(".")


def _tar_members(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """(split, class, file name, bytes) of the image files of a tar (any compression) or zip archive."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                m = _MEMBER.match(info.filename)
                if m and not info.is_dir() and _is_image(info.filename):
                    yield m["split"], m["cls"], m["file"], zf.read(info)
        return
    with tarfile.open(path, "r:*") as tf:
        for member in tf:  # streamed: a .tar.gz is read once, front to back
            m = _MEMBER.match(member.name)
            if m and member.isfile() and _is_image(member.name):
                yield m["split"], m["cls"], m["file"], tf.extractfile(member).read()


def _split_root(path: Path) -> Path | None:
    """The folder holding ``train/`` and ``test/``: ``path`` itself or its one sub-folder that does."""
    if all((path / s).is_dir() for s in SPLITS):
        return path
    inner = [d for d in sorted(path.iterdir()) if d.is_dir() and all((d / s).is_dir() for s in SPLITS)]
    return inner[0] if len(inner) == 1 else None


def _folder_members(root: Path) -> Iterator[tuple[str, str, str, bytes]]:
    for split in SPLITS:
        for cls_dir in sorted(d for d in (root / split).iterdir() if d.is_dir() and not d.name.startswith(".")):
            for f in sorted(cls_dir.iterdir()):
                if f.is_file() and _is_image(f.name):
                    yield split, cls_dir.name, f.name, f.read_bytes()


def source_digest(path: Path) -> str:
    """What names a copy's decoded store: the archive's bytes, or a folder's image names, sizes and mtimes."""
    h = hashlib.sha256(f"v{STORE_VERSION}".encode())
    if path.is_file():
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    else:
        for f in sorted(path.rglob("*")):
            if f.is_file() and _is_image(f.name):
                st = f.stat()
                h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _decode(members: Iterator[tuple[str, str, str, bytes]], image_size: int | None) -> DecodedTree:
    """Decode every image (PIL; no library decodes a batch of JPEGs faster on a CPU) into one array per split."""
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in SPLITS}
    shape = None
    for split, cls, name, data in members:
        a = decode_image(io.BytesIO(data), image_size)
        shape = check_same_size(a, shape, f"{split}/{cls}/{name}", "dataset.loader.image_size")
        found[split].append((cls, name, a))
    classes = sorted({cls for split in SPLITS for cls, _, _ in found[split]})
    index = {c: i for i, c in enumerate(classes)}
    x, y = {}, {}
    for split in SPLITS:
        rows = sorted(found[split], key=lambda r: (r[0], r[1]))
        x[split] = np.stack([a for _, _, a in rows]) if rows else np.zeros((0, 0, 0, 3), np.uint8)
        y[split] = np.array([index[c] for c, _, _ in rows], dtype=np.int64)
    return DecodedTree(x, y, classes)


def _load_store(store: Path) -> DecodedTree | None:
    """The decoded arrays kept at ``store``, or None when absent or damaged (then they are decoded again)."""
    if not store.is_file():
        return None
    try:
        with np.load(store, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in ("classes", "sha256")}
            classes, checksum = [str(c) for c in z["classes"]], str(z["sha256"])
        if _arrays_digest(arrays) != checksum:
            raise ValueError("its arrays do not match their sha256")
    except Exception as exc:  # truncated zip, missing member, bad checksum: all mean decode again
        log.warning("decoded copy %s is damaged (%s: %s); decoding the images again", store, type(exc).__name__, exc)
        return None
    return DecodedTree({s: arrays[f"x_{s}"] for s in SPLITS}, {s: arrays[f"y_{s}"] for s in SPLITS}, classes)


def _save_store(store: Path, tree: DecodedTree) -> None:
    """Best effort (a read-only data root only costs the decoding again), atomic: a killed run leaves no half file."""
    arrays = {**{f"x_{s}": tree.x[s] for s in SPLITS}, **{f"y_{s}": tree.y[s] for s in SPLITS}}
    tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp.npz")
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, classes=np.array(tree.classes), sha256=np.array(_arrays_digest(arrays)), **arrays)
        os.replace(tmp, store)
    except OSError as exc:
        log.warning("could not keep the decoded images at %s (%s); the next run decodes them again", store, exc)
        tmp.unlink(missing_ok=True)


def read_image_tree(
    name: str,
    path: str | os.PathLike,
    store_dir: str | os.PathLike,
    classes: Sequence[str] | int,
    shape: tuple[int, int, int] | None = None,
    image_size: int | None = None,
) -> DecodedTree:
    """The train and test images of a local copy (folder or archive) at ``path``, decoded once into ``store_dir``.

    ``classes``: the class names the copy must hold, in label order (or their number, when the names are the
    sorted folder names); ``shape``: the ``(H, W, C)`` every image must have after ``image_size``. Anything else is
    refused with a :class:`DatasetUnavailableError` that names what was found and what was expected.
    """
    src = abs_dir(path)
    n_classes = classes if isinstance(classes, int) else len(classes)
    expected = [
        f"train/<class>/<image> and test/<class>/<image>, {n_classes} class folders"
        + ("" if isinstance(classes, int) else f" ({', '.join(classes)})"),
        "as this folder (or its one sub-folder), or as a .tar/.tar.gz/.zip archive of it",
    ]
    override = f"dataset.loader.path=/path/to/{name} (the folder or the archive)"

    def fail(reason: str) -> DatasetUnavailableError:
        return unavailable(name, src, expected, [], reason, override)

    if not src.exists():
        raise fail(f"{src} does not exist")
    root = src if src.is_file() else _split_root(src)
    if root is None:
        raise fail(f"{src} has no train/ and test/ folders (nor one sub-folder that has both)")
    store = abs_dir(store_dir) / f"{name}-{source_digest(root)}{'' if image_size is None else f'-{image_size}px'}.npz"
    tree = _load_store(store)
    if tree is None:
        log.info("decoding the images of %s (once; kept at %s)", src, store)
        try:
            tree = _decode(_tar_members(root) if root.is_file() else _folder_members(root), image_size)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise fail(f"it cannot be read ({type(exc).__name__}: {exc}): a damaged or partial copy?") from exc
        tree = _in_label_order(tree, classes)
        _check(tree, classes, shape, fail)
        _save_store(store, tree)
    else:
        _check(tree, classes, shape, fail)
    return tree


def _in_label_order(tree: DecodedTree, classes: Sequence[str] | int) -> DecodedTree:
    """Labels renumbered to the dataset's own class order (decoding numbers the sorted folder names)."""
    if isinstance(classes, int) or set(tree.classes) != set(classes) or tree.classes == list(classes):
        return tree
    remap = np.array([list(classes).index(c) for c in tree.classes], dtype=np.int64)
    return DecodedTree(tree.x, {s: remap[tree.y[s]] for s in SPLITS}, list(classes))


def _check(tree: DecodedTree, classes: Sequence[str] | int, shape, fail) -> None:
    for split in SPLITS:
        if not len(tree.y[split]):
            raise fail(f"it holds no {split} images")
    if isinstance(classes, int):
        if len(tree.classes) != classes:
            raise fail(f"it has {len(tree.classes)} class folders, expected {classes}")
    elif tree.classes != list(classes):
        raise fail(f"its class folders are {tree.classes}, expected {list(classes)}")
    for split in SPLITS:
        missing = sorted(set(range(len(tree.classes))) - set(np.unique(tree.y[split]).tolist()))
        if missing:
            raise fail(f"its {split} split has no images of {[tree.classes[i] for i in missing]}")
    got = tuple(tree.x["train"].shape[1:])
    if shape is not None and got != tuple(shape):
        raise fail(f"its images are {got[1]}x{got[0]}x{got[2]}, expected {shape[1]}x{shape[0]}x{shape[2]}")
