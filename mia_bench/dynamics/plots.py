"""PNG plots of the dynamics analysis, drawn from what :func:`mia_bench.dynamics.analysis.analyze` returns.

* ``dynamics_plane.png``: records on the (FPR_i, TPR_i) plane at chosen epochs, side by side (jittered: the rates
  are multiples of 1/#IN and 1/#OUT models, so many records share a point), with the grid and centre of mass;
* ``dynamics_transitions.png``: the transition matrix pooled over training, the one with the peak probability of
  entering the vulnerable cell, and that probability per epoch;
* ``dynamics_com.png``: the centre-of-mass path, spatial entropy and early identification over epochs;
* ``dynamics_correlations.png``: Pearson and Spearman correlation of each hardness measure with the final
  advantage, over all records and over the finally vulnerable ones.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mia_bench.atomic import save_figure  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _grid_lines(ax, edges) -> None:
    for v in edges:
        ax.axvline(v, color="gray", lw=0.8, ls="--")
        ax.axhline(v, color="gray", lw=0.8, ls="--")


def plot_plane(report: dict, records: dict, path: Path) -> None:
    epochs = report["epochs"]
    show = report["config"].get("plot_epochs") or [epochs[0], epochs[-1]]
    edges = report["config"]["edges"]
    vul = report["grid"]["vulnerable_cell"]
    fig, axes = plt.subplots(1, len(show), figsize=(3.6 * len(show), 3.8), squeeze=False)
    rng = np.random.default_rng(0)  # jitter only; never the global RNG
    n_models = report["config"]["num_models"]
    jit = 0.25 / max(n_models / 2, 1)
    for ax, ep in zip(axes[0], show, strict=True):
        i = epochs.index(ep)
        t, f, c = records["tpr"][i], records["fpr"][i], records["cell"][i]
        ok = c >= 0
        jx = rng.uniform(-jit, jit, ok.sum())
        jy = rng.uniform(-jit, jit, ok.sum())
        colors = np.where(c[ok] == vul, "tab:red", "tab:blue")
        ax.scatter(f[ok] + jx, t[ok] + jy, s=3, alpha=0.35, c=colors, linewidths=0)
        cx, cy = report["per_epoch"]["com_fpr_pp"][i], report["per_epoch"]["com_tpr_pp"][i]
        ax.plot(cx / 100, cy / 100, marker="*", ms=14, color="black", label="centre of mass")
        _grid_lines(ax, edges)
        share = report["per_epoch"]["vulnerable_share"][i]
        ax.set_title(f"epoch {ep}: {100 * share:.1f}% vulnerable", fontsize=9)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("FPR_i (share of OUT models flagging i)")
        ax.set_ylabel("TPR_i (share of IN models flagging i)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    _save(fig, path)


def _heatmap(ax, matrix: np.ndarray, labels: list[str], title: str) -> None:
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    short = [lab.replace("TPR ", "T:").replace(" / FPR ", " F:") for lab in labels]
    ax.set_xticks(range(len(labels)), short, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), short, fontsize=6)
    ax.set_xlabel("to cell")
    ax.set_ylabel("from cell")
    ax.set_title(title, fontsize=9)
    if len(labels) <= 16:
        for a in range(len(labels)):
            for b in range(len(labels)):
                v = matrix[a, b]
                if v > 0:
                    ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=5,
                            color="white" if v < 0.5 else "black")
    plt.colorbar(im, ax=ax, fraction=0.046)


def plot_transitions(report: dict, path: Path) -> None:
    tr = report["transitions"]
    labels = report["grid"]["cells"]
    p_enter = np.array([np.nan if v is None else v for v in tr["enter_vulnerable"]], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    _heatmap(axes[0], np.array(report["transitions"]["pooled_probabilities"]), labels, "P(to | from), all epochs")
    if np.isfinite(p_enter).any():
        peak = int(np.nanargmax(p_enter))
        _heatmap(
            axes[1], np.array(tr["probabilities"][peak]), labels,
            f"epoch {tr['from_epoch'][peak]} -> {tr['to_epoch'][peak]} (peak entry)",
        )
    else:
        axes[1].axis("off")
    axes[2].plot(tr["to_epoch"], p_enter, marker="o")
    axes[2].set_xlabel("epoch (end of transition)")
    axes[2].set_ylabel("P(enter vulnerable cell)")
    axes[2].set_title("transition probability to the vulnerable cell", fontsize=9)
    axes[2].grid(alpha=0.3)
    _save(fig, path)


def plot_com(report: dict, path: Path) -> None:
    pe, epochs = report["per_epoch"], report["epochs"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    x, y = np.array(pe["com_fpr_pp"]), np.array(pe["com_tpr_pp"])
    axes[0].plot(x, y, marker="o", ms=3)
    for i in {0, len(epochs) // 2, len(epochs) - 1}:
        axes[0].annotate(str(epochs[i]), (x[i], y[i]), fontsize=7)
    lim = max(x.max(), y.max()) * 1.1 + 1
    axes[0].plot([0, lim], [0, lim], ls="--", color="gray", lw=0.8, label="TPR = FPR")
    axes[0].set_xlabel("mean FPR_i (pp)")
    axes[0].set_ylabel("mean TPR_i (pp)")
    s = report["summary"]
    axes[0].set_title(f"centre of mass: path {s['com_path_pp']:.1f} pp, net {s['com_net_pp']:.1f} pp", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].plot(epochs, pe["entropy_bits"], marker="o", ms=3)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("spatial entropy (bits)")
    axes[1].set_title(f"entropy change {s['entropy_change_bits']:+.2f} bits", fontsize=9)
    early = np.array([np.nan if v is None else v for v in pe["early_identification"]], dtype=float)
    axes[2].plot(epochs, early, marker="o", ms=3, label="already vulnerable")
    axes[2].plot(epochs, pe["vulnerable_share"], marker=".", ms=3, label="vulnerable share (all records)")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_xlabel("epoch")
    axes[2].set_title("share of finally vulnerable records already vulnerable", fontsize=9)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_correlations(report: dict, path: Path) -> None:
    hard = report["hardness"]
    names = hard["measures"]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 3, 3.8))
    width = 0.2
    xs = np.arange(len(names))
    series = [
        ("correlations_all", "pearson", "Pearson, all"),
        ("correlations_all", "spearman", "Spearman, all"),
        ("correlations_vulnerable", "pearson", f"Pearson, vulnerable (n={hard['n_vulnerable']})"),
        ("correlations_vulnerable", "spearman", "Spearman, vulnerable"),
    ]
    for j, (group, kind, label) in enumerate(series):
        vals = [hard[group][n][kind] for n in names]
        vals = [np.nan if v is None else v for v in vals]
        ax.bar(xs + (j - 1.5) * width, vals, width, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(xs, names, rotation=20, fontsize=8)
    ax.set_ylim(-1, 1)
    ax.set_ylabel(f"correlation with {hard['target']}", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_all(report: dict, records: dict, out: Path) -> None:
    plot_plane(report, records, out / "dynamics_plane.png")
    plot_transitions(report, out / "dynamics_transitions.png")
    plot_com(report, out / "dynamics_com.png")
    plot_correlations(report, out / "dynamics_correlations.png")
