"""The most exposed records of a cell: which training records the strongest attack singles out.

A record's exposure on a target model that trained on it is the FPR at which the attack would flag it: the share
of that target's non-members scoring at least as high (0 = flagged before any non-member). Averaged over the
targets that trained on the record, it ranks records by how reliably the attack finds them, on a scale that
means the same for every attack and target (scores themselves do not). Records no target trained on are not
ranked.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mia_bench.atomic import atomic_write_text, save_figure  # noqa: E402

TOP_CSV = 100    # rows of exposed_records.csv
TOP_GRID = 16    # records shown in exposed_records.png (image data)


def detection_fpr(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """``[T, N]``: for each member record of each target, the share of that target's non-members scoring at least
    as high; NaN where the record is not a member of the target."""
    out = np.full(scores.shape, np.nan)
    for t in range(scores.shape[0]):
        neg = np.sort(scores[t][~membership[t]])
        above = neg.size - np.searchsorted(neg, scores[t], side="left")     # non-members with score >= s
        out[t] = np.where(membership[t], above / max(neg.size, 1), np.nan)
    return out


def most_exposed(result, records: list[dict]) -> dict | None:
    """The strongest attack (highest mean TPR at 1% FPR) and its records ranked by mean detection FPR; None when
    no attack was run. Returns ``{"attack", "record", "fpr", "caught", "n_member", "score"}`` in rank order."""
    if not records:
        return None
    attack = max(records, key=lambda r: (r.get("tpr_at_fpr_0.01_mean", 0.0), r.get("auc_mean", 0.0)))["attack"]
    scores, member = result.scores[attack], result.labels
    fpr = detection_fpr(scores, member)
    n_member = member.sum(0)
    with np.errstate(invalid="ignore"):
        mean_fpr = np.nanmean(np.where(n_member[None, :] > 0, fpr, 0.0), axis=0)
        caught = np.nansum(fpr < 0.01, axis=0) / np.maximum(n_member, 1)
    mean_score = np.where(member, scores, 0.0).sum(0) / np.maximum(n_member, 1)
    ranked = np.flatnonzero(n_member > 0)
    ranked = ranked[np.lexsort((-mean_score[ranked], -caught[ranked], mean_fpr[ranked]))]  # lowest FPR first
    return {"attack": attack, "record": ranked, "fpr": mean_fpr[ranked], "caught": caught[ranked],
            "n_member": n_member[ranked], "score": mean_score[ranked]}


def write_exposed(exposed: dict | None, audit, out: Path, title: str = "", figure: bool = True) -> None:
    """``exposed_records.csv`` (top 100) and, for image data (and ``figure``), ``exposed_records.png`` (top 16 with
    label and FPR)."""
    if exposed is None:
        return
    labels = audit.y.numpy()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "record", "label", "attack", "mean_detection_fpr", "share_caught_at_1pct_fpr",
                "n_member_targets", "mean_member_score"])
    for rank, i in enumerate(exposed["record"][:TOP_CSV]):
        j = rank
        w.writerow([rank + 1, int(i), int(labels[i]), exposed["attack"], f"{exposed['fpr'][j]:.6g}",
                    f"{exposed['caught'][j]:.4g}", int(exposed["n_member"][j]), f"{exposed['score'][j]:.6g}"])
    atomic_write_text(out / "exposed_records.csv", buf.getvalue())
    x = audit.x
    if not figure or x.ndim != 4 or x.shape[1] not in (1, 3):
        return  # tabular data: the CSV only
    top = exposed["record"][:TOP_GRID]
    cols = 8 if top.size > 8 else max(top.size, 1)
    rows = int(np.ceil(top.size / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.75 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, i in enumerate(top):
        img = x[int(i)].numpy().transpose(1, 2, 0)
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax = axes.ravel()[k]
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        n = int(exposed["n_member"][k])
        caught = round(exposed["caught"][k] * n)
        ax.set_title(f"#{int(i)} y={int(labels[i])}\nFPR {exposed['fpr'][k]:.2g} · {caught}/{n}", fontsize=7)
    fig.suptitle(f"most exposed records, {exposed['attack']}" + (f" ({title})" if title else ""), fontsize=9)
    fig.tight_layout()
    save_figure(fig, out / "exposed_records.png")
