"""The evaluation's settings that are checked before anything loads (the command line refuses a bad value before
torch is imported): which models are targets, and the interval methods. Plain Python on purpose."""

from __future__ import annotations

CI_METHODS = ("auto", "bca", "percentile")

#: ``evaluation.targets: auto``: this many target models, or every model when K is smaller.
AUTO_TARGETS = 8


def resolve_targets(targets, num_models: int) -> list[int]:
    """``evaluation.targets``: ``auto`` (the first min(8, K) models), an int n (the first n), ``all``, or an explicit
    list of model indices."""
    if isinstance(targets, str):
        if targets not in ("all", "auto"):
            raise ValueError(
                f"evaluation.targets={targets!r}: expected auto, all, an int or a list of model indices")
        return list(range(num_models if targets == "all" else min(AUTO_TARGETS, num_models)))
    if isinstance(targets, int) and not isinstance(targets, bool):
        if not 1 <= targets <= num_models:
            raise ValueError(f"evaluation.targets={targets}: expected 1..{num_models} (num_models={num_models})")
        return list(range(targets))
    try:
        out = [int(t) for t in targets]
    except (TypeError, ValueError):
        raise ValueError(f"evaluation.targets={targets!r}: expected auto, all, an int or a list of model "
                         "indices") from None
    bad = [t for t in out if not 0 <= t < num_models]
    if bad or not out:
        raise ValueError(f"evaluation.targets={out}: indices must lie in 0..{num_models - 1}")
    return out
