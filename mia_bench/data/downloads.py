"""Fetching public archives, verifying them, and the error users see when a dataset is missing.

Every download-backed loader funnels its failures through :func:`unavailable`, so the message always names
the dataset, the absolute directory searched, the files expected there, where to download them, and the
config override that points the benchmark at an existing copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mia_bench.data.base import DatasetUnavailableError


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: the file name it is saved under, its URLs (first = primary, rest =
    mirrors) and its md5 (``None`` only where no checksum is published; see the loader's comment)."""

    filename: str
    urls: tuple[str, ...]
    md5: str | None


def abs_dir(path: str | os.PathLike) -> Path:
    """Absolute, user-expanded path (what error messages show)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def root_override(folder: str | None = None) -> str:
    where = f" (the directory that contains {folder}/)" if folder else ""
    return f"data.root=/path/to/data{where}; data.download=true fetches it when online"


def unavailable(
    dataset: str,
    directory: str | os.PathLike,
    expected: Sequence[str],
    urls: Sequence[str],
    reason: str,
    override: str,
) -> DatasetUnavailableError:
    """Build (not raise) the error for a dataset that is not on disk and cannot be fetched."""
    lines = [
        f"Dataset '{dataset}' is not available: {reason}",
        f"  searched directory: {abs_dir(directory)}",
        "  expected there:",
        *[f"    - {item}" for item in expected],
        "  download from: " + (", ".join(urls) if urls else "(no public download: user-provided data)"),
        f"  to use an existing copy, override: {override}",
    ]
    return DatasetUnavailableError("\n".join(lines))


def md5_mismatch(path: Path, md5: str | None) -> str | None:
    """Describe a checksum mismatch of an existing file, or ``None`` when it matches / is not checked."""
    from torchvision.datasets.utils import calculate_md5

    if md5 is None or not path.is_file():
        return None
    actual = calculate_md5(str(path))
    if actual == md5:
        return None
    return f"its md5 is {actual}, expected {md5}"


def _extract(archive_path: Path, directory: Path) -> None:
    from torchvision.datasets.utils import extract_archive

    extract_archive(str(archive_path), str(directory))


def fetch_and_extract(
    dataset: str,
    archive: Archive,
    directory: str | os.PathLike,
    download: bool,
    expected: Sequence[str],
    override: str,
    is_ready: Callable[[], bool],
) -> None:
    """Make sure ``is_ready()`` holds for ``directory``: extract a present archive, or download it first.

    Raises :class:`DatasetUnavailableError` when the files are missing and ``download`` is off, when every
    URL fails (e.g. no network), when the archive fails its md5 check, or when it cannot be extracted.
    """
    from torchvision.datasets.utils import download_url

    directory = abs_dir(directory)
    if is_ready():
        return
    urls = list(archive.urls)
    checksum = f" (md5 {archive.md5})" if archive.md5 else " (no published md5)"
    expected = [*expected, f"or the archive {archive.filename}{checksum}, extracted automatically"]

    def fail(reason: str) -> DatasetUnavailableError:
        return unavailable(dataset, directory, expected, urls, reason, override)

    archive_path = directory / archive.filename
    if archive_path.is_file():
        problem = md5_mismatch(archive_path, archive.md5)
        if problem is None:
            _extract_checked(archive_path, directory, fail)
            if is_ready():
                return
            raise fail(
                f"extracted {archive_path} but the expected files are still missing (unexpected layout)"
            )
        if not download:
            raise fail(
                f"found {archive_path} but {problem}: it is corrupted or a partial download; delete it and "
                "retry with data.download=true"
            )
        archive_path.unlink()  # corrupted and we may download: fetch a fresh copy

    if not download:
        raise fail("the files are missing and downloading is off (download=False / data.download=false)")

    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (archive.filename + ".part")
    errors = []
    for url in urls:
        if partial.exists():
            partial.unlink()  # never trust a leftover partial download (md5 may be unpublished)
        try:
            download_url(url, str(directory), filename=partial.name, md5=archive.md5)
        except Exception as exc:  # any failure (DNS, HTTP, checksum) falls to the next mirror
            # torchvision raises "File not found or corrupted." when the downloaded file fails its md5
            problem = md5_mismatch(partial, archive.md5) if "corrupted" in str(exc) else None
            detail = f"downloaded file is corrupted, {problem}" if problem else f"{type(exc).__name__}: {exc}"
            errors.append(f"{url}: {detail}")
            continue
        os.replace(partial, archive_path)
        break
    else:
        if partial.exists():
            partial.unlink()
        raise fail("download failed (" + "; ".join(errors) + ")")

    _extract_checked(archive_path, directory, fail)
    if not is_ready():
        raise fail(f"extracted {archive_path} but the expected files are still missing (unexpected layout)")


def _extract_checked(
    archive_path: Path, directory: Path, fail: Callable[[str], DatasetUnavailableError]
) -> None:
    try:
        _extract(archive_path, directory)
    except Exception as exc:  # tarfile/zlib/EOF errors all mean a broken archive
        raise fail(
            f"cannot extract {archive_path} ({type(exc).__name__}: {exc}): the archive is corrupted or "
            "truncated; delete it and retry with data.download=true"
        ) from exc
