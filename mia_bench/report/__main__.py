"""``python -m mia_bench.report <run or multirun dir> ...``: aggregate finished runs into ``summary.csv`` and a
markdown privacy-utility table (written next to the first directory, or to ``--out``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mia_bench.io import atomic_write_text
from mia_bench.report.aggregate import collect, privacy_utility_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mia_bench.report", description=__doc__)
    parser.add_argument("dirs", nargs="+", help="run directories, multirun directories, or metrics.json files")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first directory)")
    parser.add_argument(
        "--attacks", default="loss,lira_online,rmia", help="attacks shown in the table (comma-separated)"
    )
    parser.add_argument("--order", default="", help="defense order of the rows (comma-separated; others follow)")
    args = parser.parse_args(argv)
    try:
        df = collect(args.dirs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path(args.dirs[0])
    out = out.parent if out.is_file() else out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.csv", df.to_csv(index=False))
    table = privacy_utility_table(
        df, [a for a in args.attacks.split(",") if a], [d for d in args.order.split(",") if d]
    )
    atomic_write_text(out / "privacy_utility.md", table)
    print(table)
    print(f"wrote {out / 'summary.csv'} and {out / 'privacy_utility.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
