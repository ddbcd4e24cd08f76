"""The Python API: score your own signals with any attack, run a cell with overrides, load a run's results.

    import mia_bench
    result = mia_bench.score(logits, labels, masks, attacks=["loss", "lira_online", "rmia"])
    records = mia_bench.run(["defense=dropout", "num_models=8"], output_dir="outputs/dropout")
    res = mia_bench.load_run("outputs/dropout")

Everything here is a thin layer over what ``python -m mia_bench`` runs (the same attacks, metrics and pipeline), so
a number from the API is the number the command line prints.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mia_bench.attacks.base import Attack
from mia_bench.attacks.evaluate import EvaluationResult, evaluate
from mia_bench.metrics import default_delta
from mia_bench.signals import Signals

__all__ = ["score", "run", "load_run", "RunResults", "audit", "AuditResult"]


def _attacks(attacks: str | Attack | Iterable[str | Attack] | Mapping[str, Attack]) -> dict[str, Attack]:
    from mia_bench.config import build_attack

    if isinstance(attacks, Mapping):
        items = list(attacks.items())
    else:
        seq = [attacks] if isinstance(attacks, str | Attack) else list(attacks)
        items = [(a, build_attack(a)) if isinstance(a, str) else (a.name, a) for a in seq]
    out = {}
    for name, attack in items:
        if not isinstance(attack, Attack):
            raise TypeError(f"attack {name!r} is a {type(attack).__name__}, not an mia_bench Attack (or a name)")
        if name in out:
            raise ValueError(f"attack {name!r} given twice")
        out[name] = attack
    if not out:
        raise ValueError("no attack given: e.g. attacks=['loss', 'lira_online', 'rmia']")
    return out


def score(
    logits: np.ndarray | Signals,
    labels: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    attacks: str | Attack | Iterable[str | Attack] | Mapping[str, Attack] = ("loss", "lira_online", "rmia"),
    *,
    targets: str | int | Sequence[int] = "auto",
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    ci_method: str = "auto",
    delta: float | None = None,
    seed: int = 0,
) -> EvaluationResult:
    """Attack your own models' outputs and get the benchmark's metrics.

    ``logits``: ``[K, N, Q, C]`` (or ``[K, N, C]`` for a single query) of K models on N records; ``labels``:
    ``[N]``; ``masks``: ``[K, N]`` bool, ``masks[k, i]`` = model k trained on record i (or pass a ``Signals``).
    ``attacks``: config names (``"lira_online"``), ``Attack`` objects, or a dict name -> Attack. ``targets``: as
    ``evaluation.targets`` (``auto`` = the first min(8, K) models). ``delta`` of the epsilon lower bound: default
    1/n rounded down to a power of ten, n = records per model. Returns the evaluation: ``records`` (one dict per
    attack, as in metrics.json), ``per_target``, ``scores`` (attack -> ``[T, N]``), ``labels``, ``rocs``."""
    from mia_bench.attacks.evaluate import resolve_targets

    if isinstance(logits, Signals):
        if labels is not None or masks is not None:
            raise ValueError("pass either a Signals object or logits, labels and masks, not both")
        signals = logits
    else:
        if labels is None or masks is None:
            raise ValueError("score needs labels [N] and masks [K, N] with the logits")
        logits = np.asarray(logits)
        if logits.ndim == 3:  # [K, N, C]: one query
            logits = logits[:, :, None, :]
        signals = Signals(logits=logits, labels=np.asarray(labels), masks=np.asarray(masks))
    if delta is None:
        delta = default_delta(max(1, int(round(float(signals.masks.sum(1).mean())))))
    return evaluate(signals, _attacks(attacks), resolve_targets(targets, signals.num_models),
                    n_bootstrap=n_bootstrap, confidence=confidence, seed=seed, ci_method=ci_method, delta=delta)


def _default_output_dir(suffix: str = "") -> Path:
    """``outputs/<date>/<time>_<pid><suffix>``, as the command line names a run's folder."""
    return Path("outputs") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}_{os.getpid()}{suffix}"


def run(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> list[dict]:
    """Run one cell as ``python -m mia_bench <overrides>`` would (same config, cache and outputs) and return its
    metrics records. ``output_dir``: where its files go (default ``outputs/<date>/<time>_<pid>``, as the CLI)."""
    from omegaconf import open_dict

    from mia_bench.atomic import make_dir
    from mia_bench.config import compose
    from mia_bench.console import python_run_logging
    from mia_bench.pipeline import run as run_cell

    if output_dir is None:
        output_dir = _default_output_dir()
    cfg = compose([*overrides, f"paths.output_dir={Path(output_dir).absolute()}"], return_hydra_config=True)
    choices = {k: (str(v) if v is not None else None) for k, v in cfg.hydra.runtime.choices.items()
               if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]  # what the command line's job sees: its config without Hydra's own node
    with python_run_logging(make_dir(cfg.paths.output_dir)):
        return run_cell(cfg, choices)


@dataclass
class RunResults:
    """What a run directory holds, loaded: ``metrics`` (one dict per attack), ``per_target``, ``scores`` (attack ->
    ``[T, N]``), ``membership`` (``[T, N]``, the targets' ground truth), ``targets``, the resolved ``config``;
    ``signals()`` loads the logits on demand (they can be large)."""

    path: Path
    metrics: list[dict]
    per_target: list[dict] = field(default_factory=list)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    membership: np.ndarray | None = None
    targets: np.ndarray | None = None
    config: dict = field(default_factory=dict)

    def signals(self) -> Signals:
        return Signals.load(self.path / "signals.npz")

    def table(self, full: bool = False):
        """The table the command line printed, as a pandas DataFrame indexed by attack (the same columns, rows and
        text: mean ± std over targets); ``full=True``: every field of metrics.json, numbers as numbers."""
        import pandas as pd

        from mia_bench.report.outputs import table_rows

        if full:
            return pd.DataFrame(self.metrics).set_index("attack")
        columns, rows, _ = table_rows(self.metrics)
        return pd.DataFrame(rows, columns=columns).set_index("attack")


def load_run(path: str | Path) -> RunResults:
    """The results of a finished run directory (``metrics.json``; ``per_target.json``, ``scores.npz`` and
    ``config.yaml`` when present)."""
    from omegaconf import OmegaConf

    path = Path(path)
    metrics_file = path / "metrics.json"
    if not metrics_file.exists():
        raise FileNotFoundError(f"{path}: no metrics.json (not a finished run directory)")
    res = RunResults(path=path, metrics=json.loads(metrics_file.read_text()))
    if (path / "per_target.json").exists():
        res.per_target = json.loads((path / "per_target.json").read_text())
    if (path / "scores.npz").exists():
        with np.load(path / "scores.npz", allow_pickle=False) as z:
            res.membership, res.targets = z["membership"], z["targets"]
            res.scores = {name: z[f"scores/{name}"] for name in z["attacks"].tolist()}
    if (path / "config.yaml").exists():
        res.config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
    return res


@dataclass
class AuditResult:
    """What :func:`audit` found: ``scores`` (attack -> ``[N]`` scores of the target on the audited records, higher =
    more likely a member), ``records`` (one dict per attack with the metrics, when membership was given), the
    ``signals`` (references first, the target last) and the reference models' ``masks``."""

    scores: dict[str, np.ndarray]
    signals: Signals
    records: list[dict] = field(default_factory=list)
    per_target: list[dict] = field(default_factory=list)

    def most_exposed(self, attack: str, n: int = 20) -> np.ndarray:
        """Indices of the ``n`` records ``attack`` scores highest on the target: the likeliest members."""
        return np.argsort(-self.scores[attack], kind="stable")[:n]


def audit(
    target,
    x,
    y,
    members: np.ndarray | None = None,
    *,
    overrides: Sequence[str] = (),
    num_reference: int = 16,
    attacks: str | Iterable[str | Attack] | Mapping[str, Attack] = ("loss", "lira_online", "lira_offline", "rmia",
                                                                     "rmia_offline"),
    n_bootstrap: int = 200,
    seed: int = 0,
    output_dir: str | Path | None = None,
) -> AuditResult:
    """Audit a model trained elsewhere, as the LiRA and RMIA papers attack a model they did not train.

    ``target``: the trained ``nn.Module`` (load its checkpoint into its constructor first), in the mode it is
    deployed in (eval); its outputs must be logits over the same classes as ``y``. ``x``, ``y``: the candidate
    records (those it may have been trained on, and others from the same distribution), inputs preprocessed as the
    target expects. ``num_reference`` reference models are trained here on paired random halves of these records
    with the recipe of ``python -m mia_bench <overrides>`` (its model, training and defense settings; cached like
    any run's models), so each record is IN for half of them and OUT for the other half, which is what online and
    offline LiRA and RMIA need. The target is then scored with every attack against all the reference models.
    ``members`` (bool ``[N]``, optional): the target's true membership, when known, for metrics (AUC, TPR at low
    FPR, epsilon lower bound, ...; the calibration shadow is reference model 0). Without it, the result holds the
    scores only: a ranking of the records by how likely they were trained on. It runs through the command line's
    stages: the config is validated and the reference set-up checked before anything trains, the reference models
    and their signals are cached, ``cpu_threads`` applies. ``output_dir`` (default
    ``outputs/<date>/<time>_<pid>_audit``) receives ``config.yaml``, ``signals.npz``, ``scores.npz`` and, with
    ``members``, ``metrics.json`` and ``per_target.json``, and the reference models' training logs."""
    from mia_bench.atomic import make_dir
    from mia_bench.config import compose
    from mia_bench.console import python_run_logging
    from mia_bench.pipeline import audit_model

    records, members = _audit_records(x, y, members, num_reference)
    if output_dir is None:
        output_dir = _default_output_dir("_audit")
    cfg = compose([*overrides, f"num_models={num_reference}", f"seed={seed}", f"evaluation.n_bootstrap={n_bootstrap}",
                   f"paths.output_dir={Path(output_dir).absolute()}"])
    with python_run_logging(make_dir(cfg.paths.output_dir)):
        found = audit_model(cfg, target, records, members, _attacks(attacks))
    return AuditResult(found.scores, found.signals, found.records, found.per_target)


def _audit_records(x, y, members, num_reference: int):
    """The audit's records as tensors and its membership as a bool array, or a ValueError naming what is wrong."""
    import torch

    from mia_bench.data.base import ArrayData

    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    if x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"x has {x.shape[0]} records and y shape {tuple(y.shape)}; expected y [N] for x [N, ...]")
    if num_reference < 2 or num_reference % 2:
        raise ValueError(f"num_reference={num_reference}: expected an even number >= 2 (paired halves)")
    if members is not None:
        members = np.asarray(members, dtype=bool)
        if members.shape != (x.shape[0],):
            raise ValueError(f"members has shape {members.shape}; expected ({x.shape[0]},), one flag per record")
        if members.all() or not members.any():
            raise ValueError("members must hold both members and non-members for metrics (or pass None)")
    return ArrayData(x, y), members
