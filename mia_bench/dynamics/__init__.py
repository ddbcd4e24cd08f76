"""Per-record privacy dynamics across training (``+analysis=dynamics``).

``recorder`` snapshots each model's logits on the audit records at chosen epochs while it trains;
``vulnerability`` turns one checkpoint's snapshots into per-record TPR/FPR and the grid, transition, centre of mass,
entropy and early-identification figures; ``hardness`` measures how hard each record is; ``analysis`` runs it all
and writes ``dynamics.json``, ``dynamics_records.npz`` and the plots (``plots``); ``config`` checks its settings.
"""

from mia_bench.dynamics.analysis import DynamicsAnalysis, analyze
from mia_bench.dynamics.config import DynamicsSettings
from mia_bench.dynamics.recorder import DynamicsRecorder

__all__ = ["DynamicsAnalysis", "DynamicsRecorder", "DynamicsSettings", "analyze"]
