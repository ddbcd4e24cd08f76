"""``python -m mia_bench.cache list|prune``: what the model/signals cache holds, and removing some of it."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from mia_bench.cache.store import KINDS, EntryStore, default_dir

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
    parser = argparse.ArgumentParser(
        prog="python -m mia_bench.cache",
        description="List or prune the model/signals cache (default folder: $MIA_BENCH_CACHE or ./cache).",
    )
    parser.add_argument("--dir", type=Path, default=None, help="cache folder (default: $MIA_BENCH_CACHE or ./cache)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per entry: kind, key, size, age, last use, description")
    pruning = sub.add_parser("prune", help="remove entries (dry run unless --yes)")
    pruning.add_argument("--older-than", default=None, help="not used for this long, e.g. 7d, 12h, 30m, 3600")
    pruning.add_argument("--key", action="append", default=[], help="key or key prefix (repeatable)")
    pruning.add_argument("--kind", choices=KINDS, default=None, help="only this kind of entry")
    pruning.add_argument("--incomplete", action="store_true", help="partial entries and leftover temporary folders")
    pruning.add_argument("--all", action="store_true", help="every entry")
    pruning.add_argument("--yes", "-y", action="store_true", help="really delete (default: dry run, print only)")
    args = parser.parse_args(argv)

    store = EntryStore(args.dir if args.dir is not None else default_dir())
    if args.command == "list":
        return list_entries(store)
    if not (args.all or args.older_than or args.key or args.incomplete):
        parser.error("prune: choose what to remove: --older-than AGE, --key KEY, --incomplete or --all")
    try:
        max_age = parse_age(args.older_than) if args.older_than else None
    except ValueError as err:
        parser.error(str(err))
    return prune_entries(store, args, max_age)


def list_entries(store: EntryStore) -> int:
    entries, now = store.scan(), time.time()
    if not entries:
        print(f"cache {store.root}: empty")
        return 0
    print(f"{'kind':<8} {'key':<24} {'size':>9} {'age':>6} {'used':>6}  description")
    for e in entries:
        print(
            f"{e.kind:<8} {e.key[:24]:<24} {_human_size(e.size):>9} {_human_age(now - e.created):>6} "
            f"{_human_age(now - e.last_used):>6}  {e.description}"
        )
    print(f"{len(entries)} entries, {_human_size(sum(e.size for e in entries))} in {store.root}")
    return 0


def prune_entries(store: EntryStore, args: argparse.Namespace, max_age: float | None) -> int:
    """Remove (``--yes``) or list (dry run) the entries the options choose."""
    now = time.time()
    chosen = [
        e for e in store.scan()
        if (not args.kind or e.kind == args.kind)
        and (
            args.all
            or (max_age is not None and now - e.last_used > max_age)
            or any(e.key.startswith(k) for k in args.key)
            or (args.incomplete and not e.complete)
        )
    ]
    verb = "removing" if args.yes else "would remove"
    kept = []
    for e in chosen:
        used = _human_age(now - e.last_used)
        print(f"{verb} {e.kind}/{e.key} ({_human_size(e.size)}, used {used} ago)  {e.description}")
        if args.yes and not store.remove(e):
            kept.append(e)
            print(f"  could not remove {e.path} (permissions?)")
    removed = [e for e in chosen if e not in kept]
    freed = _human_size(sum(e.size for e in removed if args.yes) if args.yes else sum(e.size for e in chosen))
    if args.yes:
        if args.all and not args.kind:
            shutil.rmtree(store.root / "locks", ignore_errors=True)
        print(f"removed {len(removed)} entries ({freed})" + (f"; {len(kept)} could not be removed" if kept else ""))
        return 1 if kept else 0
    else:
        print(f"dry run: {len(chosen)} entries ({freed}) would be removed; add --yes to delete them")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python -m mia_bench.cache list | head` closed the pipe early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        sys.exit(0)
