"""The model/signals cache on disk, and its command line: ``python -m mia_bench.cache list|prune``.

Layout (no index file that parallel jobs would rewrite; listing scans the manifests)::

    <cache.dir>/models/<key>/model.pt        state_dict (torch.save, loaded with weights_only=True)
                            /artifacts.npz    arrays recorded during training (module.artifacts)
                            /manifest.json    key, description, created, files with size and sha256, meta
    <cache.dir>/signals/<key>/signals.npz     logits, labels, masks + per-model utility (test_acc, train_acc)
                             /manifest.json

An entry is written into a temporary folder next to its final place and renamed into place in one
``os.rename`` (atomic on POSIX file systems): readers never see half an entry, and two jobs that build the same
entry at once keep whichever finished first. On read every file is checked against the manifest's size and
sha256; a corrupt or partial entry is logged with a warning, removed, and rebuilt by the caller.

What the keys cover and what goes into an entry: :mod:`mia_bench.training.cache`. This module imports neither
torch nor Lightning, so the command line starts at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia_bench import __version__

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


def digest(obj: Any) -> str:
    """sha256 of a JSON-able object in canonical form (sorted keys, no whitespace), 24 hex characters."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


# ----------------------------------------------------------------------------------------------------- entries
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


class Cache:
    """Entries of two kinds (``models``, ``signals``) under one folder; safe for parallel jobs (see module doc)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def path(self, kind: str, key: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"cache kind={kind!r}: expected one of {list(KINDS)}")
        return self.root / kind / key

    # ------------------------------------------------------------------------------------------------- read
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
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            self.invalidate(kind, key, f"corrupt or partial ({err})")
            return None
        try:
            os.utime(path / MANIFEST)  # last use, for `prune --older-than`
        except OSError:
            pass
        return Entry(kind, key, path, manifest)

    def invalidate(self, kind: str, key: str, reason: str) -> None:
        """Remove an entry that cannot be used, with a warning naming it (the caller rebuilds it)."""
        path = self.path(kind, key)
        log.warning("cache entry %s is %s: removing it and rebuilding", path, reason)
        shutil.rmtree(path, ignore_errors=True)

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
                json.dump(manifest, f, indent=1, default=_json_default)
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
            if isinstance(err, (OSError, TypeError, ValueError)):
                log.warning("cannot write cache entry %s (%s): continuing without caching it", final, err)
                return False
            raise

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

    def remove(self, info: EntryInfo) -> None:
        shutil.rmtree(info.path, ignore_errors=True)


def _json_default(o):
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


# ------------------------------------------------------------------------------------------------------ CLI
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``2w`` or plain seconds -> seconds."""
    t = text.strip().lower()
    try:
        if t and t[-1] in _UNITS:
            value = float(t[:-1]) * _UNITS[t[-1]]
        else:
            value = float(t)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"--older-than={text!r}: expected a duration like 3600, 30m, 12h, 7d or 2w")
    return value


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _human_age(seconds: float) -> str:
    s = max(0.0, seconds)
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.0f}s"


def main(argv: list[str] | None = None) -> int:
    """``python -m mia_bench.cache list|prune``: see ``--help``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mia_bench.cache",
        description="List or prune the model/signals cache (default folder: $MIA_BENCH_CACHE or ./cache).",
    )
    parser.add_argument("--dir", type=Path, default=None, help="cache folder (default: $MIA_BENCH_CACHE or ./cache)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per entry: kind, key, size, age, last use, description")
    prune = sub.add_parser("prune", help="remove entries (dry run unless --yes)")
    prune.add_argument("--older-than", default=None, help="not used for this long, e.g. 7d, 12h, 30m, 3600")
    prune.add_argument("--key", action="append", default=[], help="key or key prefix (repeatable)")
    prune.add_argument("--kind", choices=KINDS, default=None, help="only this kind of entry")
    prune.add_argument("--incomplete", action="store_true", help="partial entries and leftover temporary folders")
    prune.add_argument("--all", action="store_true", help="every entry")
    prune.add_argument("--yes", "-y", action="store_true", help="really delete (default: dry run, print only)")
    args = parser.parse_args(argv)

    store = Cache(args.dir if args.dir is not None else default_dir())
    entries = store.scan()
    now = time.time()
    if args.command == "list":
        if not entries:
            print(f"cache {store.root}: empty")
            return 0
        print(f"{'kind':<8} {'key':<24} {'size':>9} {'age':>6} {'used':>6}  description")
        for e in entries:
            print(
                f"{e.kind:<8} {e.key[:24]:<24} {_human_size(e.size):>9} {_human_age(now - e.created):>6} "
                f"{_human_age(now - e.last_used):>6}  {e.description}"
            )
        total = sum(e.size for e in entries)
        print(f"{len(entries)} entries, {_human_size(total)} in {store.root}")
        return 0

    if not (args.all or args.older_than or args.key or args.incomplete):
        parser.error("prune: choose what to remove: --older-than AGE, --key KEY, --incomplete or --all")
    try:
        max_age = parse_age(args.older_than) if args.older_than else None
    except ValueError as err:
        parser.error(str(err))
    chosen = []
    for e in entries:
        if args.kind and e.kind != args.kind:
            continue
        if args.all:
            hit = True
        else:
            hit = (
                (max_age is not None and now - e.last_used > max_age)
                or any(e.key.startswith(k) for k in args.key)
                or (args.incomplete and not e.complete)
            )
        if hit:
            chosen.append(e)
    verb = "removing" if args.yes else "would remove"
    for e in chosen:
        used = _human_age(now - e.last_used)
        print(f"{verb} {e.kind}/{e.key} ({_human_size(e.size)}, used {used} ago)  {e.description}")
        if args.yes:
            store.remove(e)
    freed = _human_size(sum(e.size for e in chosen))
    if args.yes:
        if args.all and not args.kind:
            shutil.rmtree(store.root / "locks", ignore_errors=True)
        print(f"removed {len(chosen)} entries ({freed})")
    else:
        print(f"dry run: {len(chosen)} entries ({freed}) would be removed; add --yes to delete them")
    return 0


__all__ = ["Cache", "Entry", "EntryInfo", "default_dir", "digest", "main"]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python -m mia_bench.cache list | head` closed the pipe early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        sys.exit(0)
