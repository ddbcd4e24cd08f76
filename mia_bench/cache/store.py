"""Entries of the model/signals cache on disk: the layout, atomic writes, integrity checks, locks and listing.

Layout (no index file that parallel jobs would rewrite; listing scans the manifests)::

    <cache.dir>/models/<key>/model.pt        state_dict (torch.save, loaded with weights_only=True)
                            /artifacts.npz    arrays recorded during training (module.artifacts)
                            /manifest.json    key, description, created, files with size and sha256, meta
    <cache.dir>/signals/<key>/signals.npz     logits, labels, masks + per-model utility (test_acc, train_acc)
                             /manifest.json

An entry is written into a temporary folder next to its final place and renamed into place in one ``os.rename``
(atomic on POSIX file systems): readers never see half an entry, and two jobs that build the same entry at once keep
whichever finished first. On read every file is checked against the manifest's size and sha256; a corrupt or
partial entry is logged with a warning, removed, and rebuilt by the caller. This module imports neither torch nor
Lightning, so the command line (``python -m mia_bench.cache``) starts at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia_bench import __version__
from mia_bench.atomic import current_umask, jsonable

log = logging.getLogger(__name__)

#: Bumped when the entry layout changes; part of every key.
FORMAT = 1
KINDS = ("models", "signals")
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
DEFAULT_DIR = "cache"  # the config default, ${oc.env:MIA_BENCH_CACHE,cache}, relative to the working directory


def default_dir() -> Path:
    """The cache folder the config uses by default: ``$MIA_BENCH_CACHE`` or ``./cache``."""
    return Path(os.environ.get("MIA_BENCH_CACHE") or DEFAULT_DIR)


# ----------------------------------------------------------------------------------------------------- entries
class ShardNotStored(OSError):
    """A shard job whose models the cache could not store (a full or read-only cache)."""


@dataclass
class Entry:
    """A verified cache entry: its folder and manifest (``meta`` holds what the writer stored beside the files)."""

    kind: str
    key: str
    path: Path
    manifest: dict

    @property
    def meta(self) -> dict:
        return self.manifest.get("meta", {})

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass
class EntryInfo:
    """One folder under the cache, for ``list``/``prune``: complete entries and leftovers alike."""

    kind: str
    key: str
    path: Path
    size: int
    created: float  # seconds since the epoch
    last_used: float
    description: str
    complete: bool


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class EntryStore:
    """Entries of two kinds (``models``, ``signals``) under one folder; safe for parallel jobs (see module doc)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"EntryStore({str(self.root)!r})"

    def path(self, kind: str, key: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"cache kind={kind!r}: expected one of {list(KINDS)}")
        return self.root / kind / key

    # ------------------------------------------------------------------------------------------------- read
    def has(self, kind: str, key: str) -> bool:
        """Whether a complete entry is stored under ``key`` (cheap: its manifest exists; not verified)."""
        return (self.path(kind, key) / MANIFEST).is_file()

    def get(self, kind: str, key: str) -> Entry | None:
        """The verified entry, or None on a miss. A corrupt or partial entry is a warning, removed, and a miss."""
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if manifest.get("key") != key or manifest.get("kind") != kind:
                raise ValueError(f"manifest names {manifest.get('kind')}/{manifest.get('key')}")
            for name, info in manifest["files"].items():
                f = path / name
                if not f.is_file():
                    raise ValueError(f"{name} is missing")
                if f.stat().st_size != info["size"]:
                    raise ValueError(f"{name} has {f.stat().st_size} bytes, manifest says {info['size']}")
                if _file_sha256(f) != info["sha256"]:
                    raise ValueError(f"{name} does not match its checksum")
        except PermissionError as err:  # another user's entry, say: not damaged, and not ours to remove
            log.warning("cache entry %s is unreadable (%s): training without it; a shared cache needs entries "
                        "readable by every user (umask 022 or group-readable)", path, err)
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            self.invalidate(kind, key, f"corrupt or partial ({err})")
            return None
        try:
            os.utime(path / MANIFEST)  # last use, for `prune --older-than`
        except OSError:
            pass
        return Entry(kind, key, path, manifest)

    def invalidate(self, kind: str, key: str, reason: str) -> None:
        """Remove an entry that cannot be used, with a warning naming it and saying whether it could be removed
        (the caller rebuilds it)."""
        path = self.path(kind, key)
        if self.remove_path(path):
            log.warning("cache entry %s is %s: removed it; rebuilding", path, reason)
        else:
            log.warning("cache entry %s is %s, and it could not be removed (permissions?): rebuilding without "
                        "storing over it; remove it by hand", path, reason)

    @staticmethod
    def remove_path(path: Path) -> bool:
        """Delete a folder; whether it is gone."""
        shutil.rmtree(path, ignore_errors=True)
        return not path.exists()

    # ------------------------------------------------------------------------------------------------ write
    def put(
        self,
        kind: str,
        key: str,
        writers: dict[str, Callable[[Any], None]],
        description: str,
        meta: dict | None = None,
    ) -> bool:
        """Write an entry: ``writers[name](file)`` writes file ``name``; the entry appears at once, complete.

        Returns False (with a warning, the run goes on) when the cache cannot be written, e.g. a full disk."""
        final = self.path(kind, key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key}-", dir=final.parent))
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; a shared cache needs the umask
        except OSError as err:
            log.warning("cannot write cache entry %s (%s): continuing without caching it", final, err)
            return False
        try:
            files = {}
            for name, write in writers.items():
                with open(tmp / name, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                files[name] = {"size": (tmp / name).stat().st_size, "sha256": _file_sha256(tmp / name)}
            manifest = {
                "key": key,
                "kind": kind,
                "description": description,
                "created": time.time(),
                "created_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "version": __version__,
                "format": FORMAT,
                "files": files,
                "meta": meta or {},
            }
            with open(tmp / MANIFEST, "w") as f:
                json.dump(jsonable(manifest), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.rename(tmp, final)  # atomic; fails if another job put the same entry first
            except OSError:
                if not final.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # same key = same content: keep theirs
            _fsync_dir(final.parent)
            return True
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, Exception):  # a full disk surfaces as torch.save's RuntimeError, not an OSError
                log.warning("cannot write cache entry %s (%s: %s): continuing without caching it", final,
                            type(err).__name__, err)
                return False
            raise  # an interruption is not a write failure

    # ----------------------------------------------------------------------------------------- list, prune
    def scan(self) -> list[EntryInfo]:
        """Every folder under the cache (complete entries, partial ones, leftover temporary folders), by scanning:
        cheap (manifests only, no checksums)."""
        out = []
        for kind in KINDS:
            base = self.root / kind
            if not base.is_dir():
                continue
            for path in sorted(base.iterdir()):
                if not path.is_dir():
                    continue
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                mtime = path.stat().st_mtime
                try:
                    manifest = json.loads((path / MANIFEST).read_text())
                    created = float(manifest["created"])
                    last_used = max(created, (path / MANIFEST).stat().st_mtime)
                    desc, complete = str(manifest.get("description", "")), not path.name.startswith(TMP_PREFIX)
                except (OSError, ValueError, KeyError, TypeError):
                    created = last_used = mtime
                    desc = (
                        "(temporary: being written, or left by a killed job)"
                        if path.name.startswith(TMP_PREFIX)
                        else "(incomplete: no readable manifest)"
                    )
                    complete = False
                out.append(EntryInfo(kind, path.name, path, size, created, last_used, desc, complete))
        return sorted(out, key=lambda e: (e.kind, e.created, e.key))

    @contextmanager
    def lock(self, kind: str, key: str, blocking: bool) -> Iterator[bool]:
        """Advisory lock on building one entry, so that parallel jobs (a multirun over attacks under a parallel
        launcher) do not train the same model twice: ``flock`` on ``<dir>/locks/<kind>-<key>.lock``, released when
        the block ends or the process dies. Yields whether it was acquired (always True when ``blocking``); where
        locking is unavailable it yields True (the atomic rename still keeps entries whole)."""
        path = self.root / "locks" / f"{kind}-{key}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                acquired = True
            except BlockingIOError:
                acquired = False
            except OSError:  # e.g. a file system without locks: go on unlocked
                acquired = True
            yield acquired
        finally:
            os.close(fd)  # releases the lock

    def remove(self, info: EntryInfo) -> bool:
        """Delete an entry's folder; whether it is gone."""
        return self.remove_path(info.path)
