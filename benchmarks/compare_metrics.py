"""Compare two runs' metrics.json field by field (records matched by attack), ignoring timings.

    python benchmarks/compare_metrics.py OLD_RUN_DIR NEW_RUN_DIR [--within-ci]

Exit status 0 when every number is identical (bit for bit) and the same fields are present, 1 otherwise. Used to
check that a refactor changes no result: run the default cell on the old and the new code with the same seed, then
compare. ``--within-ci``: for a change that may move numbers by float rounding (the ensemble path), require
instead that every metric's new mean lies within the old run's bootstrap interval, and report the largest move.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

#: Fields that measure time or the run's place, not its results.
IGNORED = ("seconds", "train_seconds", "models_from_cache", "version", "dynamics/analysis_seconds",
           "dynamics/record_seconds_snapshots", "dynamics/record_seconds_hardness")


def load(run: Path) -> dict[str, dict]:
    path = run / "metrics.json" if run.is_dir() else run
    return {rec["attack"]: rec for rec in json.loads(path.read_text())}


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    problems = []
    if sorted(old) != sorted(new):
        problems.append(f"attacks differ: {sorted(old)} vs {sorted(new)}")
    fields = 0
    for attack in sorted(set(old) & set(new)):
        a, b = old[attack], new[attack]
        for key in sorted(set(a) | set(b)):
            if key in IGNORED:
                continue
            fields += 1
            if key not in a or key not in b:
                problems.append(f"{attack}: {key} only in {'old' if key in a else 'new'}")
            elif not same(a[key], b[key]):
                problems.append(f"{attack}: {key} {a[key]!r} -> {b[key]!r}")
    print(f"compared {fields} fields of {len(set(old) & set(new))} attacks; {len(problems)} differ")
    return problems


def within_ci(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    problems, worst = [], (0.0, "")
    for attack in sorted(set(old) & set(new)):
        a, b = old[attack], new[attack]
        for key in sorted(k[: -len("_mean")] for k in a if k.endswith("_mean") and f"{k[:-5]}_ci_low" in a):
            lo, hi, m = a[f"{key}_ci_low"], a[f"{key}_ci_high"], b.get(f"{key}_mean")
            if m is None or not lo <= m <= hi:
                problems.append(f"{attack}: {key}_mean {m!r} outside the old interval [{lo}, {hi}]")
            move = abs(m - a[f"{key}_mean"]) if m is not None else math.inf
            worst = max(worst, (move, f"{attack}: {key}"))
    print(f"every mean within the old interval: {not problems}; largest move {worst[0]:.2e} ({worst[1]})")
    return problems


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--within-ci"]
    if len(args) != 2:
        sys.exit(__doc__)
    check = within_ci if "--within-ci" in sys.argv else compare
    diffs = check(load(Path(args[0])), load(Path(args[1])))
    for line in diffs:
        print(line)
    sys.exit(1 if diffs else 0)
