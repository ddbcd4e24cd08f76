"""The dynamics analysis: the pure functions on constructed trajectories with known answers, hardness against
independent computations, the recorder (does not change training, snapshots the right states), config errors,
and one tiny real run that writes every output."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mia_bench.analyses import RunInfo, build_analyses
from mia_bench.attacks.lira import LiRA
from mia_bench.dynamics import hardness as H
from mia_bench.dynamics import vulnerability as V
from mia_bench.dynamics.recorder import DynamicsRecorder
from mia_bench.models import create_model
from mia_bench.signals import Signals, make_synthetic_signals
from mia_bench.training.loader import TensorBatchLoader
from mia_bench.training.module import ClassifierModule
from tests.conftest import TINY

EDGES = np.array([1 / 3, 2 / 3])


# ---------------------------------------------------------------------------------------------- vulnerability
def test_cells_edges_and_vulnerable_cell():
    tpr = np.array([0.0, 2 / 6, 4 / 6, 1.0, 0.9, np.nan, 0.5])
    fpr = np.array([0.0, 0.0, 0.1, 0.5, 1.0, 0.0, np.nan])
    # bins: 0 below 1/3, 1 in [1/3, 2/3), 2 at or above 2/3; values exactly on an edge go up
    assert V.assign_cells(tpr, fpr, EDGES).tolist() == [0, 3, 6, 7, 8, -1, -1]
    assert V.vulnerable_cell(EDGES) == 6  # top TPR row, bottom FPR column
    assert V.vulnerable_cell(np.array([0.5])) == 2  # 2x2 grid: cell tpr_bin * 2 + fpr_bin = 1 * 2 + 0
    assert V.assign_cells(np.array([0.75]), np.array([0.2]), np.array([0.5])).tolist() == [2]
    with pytest.raises(ValueError, match="edges"):
        V.check_edges([0.6, 0.3])
    with pytest.raises(ValueError, match="edges"):
        V.check_edges([0.0, 0.5])


def test_transition_matrix_exact_for_known_moves():
    # 6 records over 3 checkpoints; moves chosen by hand.
    cells = np.array(
        [
            [0, 0, 4, 6, 8, -1],
            [0, 6, 6, 6, 4, 3],
            [6, 6, 6, 0, 4, 3],
        ]
    )
    counts = V.transition_counts(cells, 9)
    expected = np.zeros((2, 9, 9), dtype=np.int64)
    for a, b in [(0, 0), (0, 6), (4, 6), (6, 6), (8, 4)]:  # record 5 undefined at the start: left out
        expected[0, a, b] += 1
    for a, b in [(0, 6), (6, 6), (6, 6), (6, 0), (4, 4), (3, 3)]:
        expected[1, a, b] += 1
    assert np.array_equal(counts, expected)
    probs = V.row_normalize(counts)
    assert probs[0, 0, 0] == 0.5 and probs[0, 0, 6] == 0.5 and probs[0, 4, 6] == 1.0
    assert probs[1, 6, 6] == 2 / 3 and probs[1, 6, 0] == 1 / 3
    assert np.all(probs[0, 1] == 0)  # an empty row stays 0
    # P(enter vulnerable): step 0: records 0,1,2,4 outside cell 6 and defined -> 1 (record 1) + 1 (record 2) of 4
    # step 1: records 0, 4, 5 outside -> record 0 enters: 1 of 3
    assert np.allclose(V.enter_probability(cells, 6), [2 / 4, 1 / 3])
    # early identification: finally vulnerable records 0, 1, 2; vulnerable at each checkpoint: {}, {1, 2}, all
    assert np.allclose(V.early_identification(cells, 6), [0.0, 2 / 3, 1.0])


def test_center_of_mass_path_and_entropy_known_points():
    tpr = np.array([[0.0, 0.5, 1.0, 0.5], [0.3, 0.3, 0.3, 0.3], [0.6, 0.6, 0.6, np.nan]])
    fpr = np.array([[0.0, 0.0, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0], [0.4, 0.4, 0.4, 0.4]])
    com = V.center_of_mass(tpr, fpr)
    assert np.allclose(com, [[10.0, 50.0], [0.0, 30.0], [40.0, 60.0]])  # (FPR, TPR) in pp; NaN record left out
    assert V.path_length(com) == pytest.approx(np.hypot(10, 20) + np.hypot(40, 30))
    assert V.path_length(np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]])) == 5.0

    h = V.spatial_entropy(tpr, fpr, bins=10)
    assert h.shape == (3,)
    assert h[0] == pytest.approx(2.0)  # four records in four different bins
    assert h[1] == pytest.approx(0.0)  # all in one bin
    assert h[2] == pytest.approx(0.0)  # the undefined record is left out
    two = V.spatial_entropy(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0.0, 0.0, 1.0, 1.0]), bins=2)
    assert two == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    # 10x10 grid, 100 records one per bin: log2(100) bits
    t = (np.repeat(np.arange(10), 10) + 0.5) / 10 + rng.uniform(-0.04, 0.04, 100)
    f = (np.tile(np.arange(10), 10) + 0.5) / 10
    assert V.spatial_entropy(t, f, 10) == pytest.approx(np.log2(100))


def test_per_record_rates_at_a_global_threshold():
    # K = 4 models, N = 3 records, n_out = 6 (OUT model, record) pairs.
    masks = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    scores = np.array([[5.0, 1.0, 4.0], [0.0, 3.0, 2.5], [6.0, 0.5, 0.2], [2.0, 7.0, 0.1]])
    # OUT scores: 0.0 (m1 r0), 2.0 (m3 r0), 1.0 (m0 r1), 0.5 (m2 r1), 2.5 (m1 r2), 0.2 (m2 r2); sorted desc:
    # 2.5, 2.0, 1.0, 0.5, 0.2, 0.0. fpr = 0.34 -> floor(2.04) = 2 flagged -> threshold 1.0 (flag > 1.0)
    tpr, fpr, tau, realised = V.per_record_rates(scores, masks, 0.34)
    assert tau == 1.0 and realised == pytest.approx(2 / 6)
    # flags: r0: m0 5 IN yes, m2 6 IN yes, m1 0 OUT no, m3 2 OUT yes -> TPR 1, FPR 1/2
    # r1: m1 3 IN yes, m3 7 IN yes, OUT none -> TPR 1, FPR 0; r2: m0 4 IN yes, m3 0.1 IN no, m1 2.5 OUT yes
    assert np.allclose(tpr, [1.0, 1.0, 0.5]) and np.allclose(fpr, [0.5, 0.0, 0.5])
    # a record with no IN model has an undefined TPR
    masks2 = masks.copy()
    masks2[:, 1] = False
    tpr2, _, _, _ = V.per_record_rates(scores, masks2, 0.34)
    assert np.isnan(tpr2[1])


def test_global_threshold_flags_floor_fpr_of_out_pairs():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(16, 500))
    masks = rng.random((16, 500)) < 0.5
    for fpr in (0.01, 0.05, 0.3):
        tau = V.global_threshold(scores, masks, fpr)
        n_out = (~masks).sum()
        assert ((scores > tau) & ~masks).sum() == int(np.floor(fpr * n_out))
    with pytest.raises(ValueError, match="fpr"):
        V.global_threshold(scores, masks, 1.0)


def test_loo_scores_are_lira_with_every_other_model_but_the_partner_as_reference():
    sig = make_synthetic_signals(num_models=6, num_records=120, num_queries=1, seed=3)
    attack = LiRA(online=True)
    scores = V.loo_scores(sig.logits, sig.labels, sig.masks, attack)
    assert scores.shape == (6, 120)
    for t, ref in ((0, [2, 3, 4, 5]), (5, [0, 1, 2, 3])):  # paired masks: 1 is 0's partner, 4 is 5's
        assert np.array_equal(scores[t], LiRA(online=True).score(sig, t, np.array(ref)))


@pytest.mark.parametrize("seed", [0, 1])
def test_per_record_advantage_is_zero_on_null_signals(seed):
    """Membership independent of the logits: the mean TPR_i - FPR_i must be 0 (it was -0.03 with the target's
    complementary partner among the references, whose mask is the target's answer key)."""
    sig = make_synthetic_signals(num_models=8, num_records=2000, num_queries=1, independent=True, seed=seed)
    scores = V.loo_scores(sig.logits, sig.labels, sig.masks, LiRA(online=True))
    tpr, fpr, _, _ = V.per_record_rates(scores, sig.masks, 0.05)
    assert abs(np.nanmean(tpr - fpr)) < 0.01


# ---------------------------------------------------------------------------------------------- hardness
def test_ensemble_hardness_against_direct_formulas():
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]], [[0.1, 0.6, 0.3], [0.2, 0.5, 0.3]]]))  # [K=2,N=2,C]
    labels = np.array([0, 1])
    out = H.ensemble_hardness(logits, labels, np.ones((2, 2), dtype=bool))
    assert np.allclose(out["loss"], [-(np.log(0.7) + np.log(0.1)) / 2, -np.log(0.5)])
    assert np.allclose(out["uncertainty_std"], [0.3, 0.0])  # std of p_y: (0.7, 0.1) and (0.5, 0.5)
    pbar = np.array([0.4, 0.4, 0.2])
    ent = lambda p: -(p * np.log(p)).sum()  # noqa: E731
    mi0 = ent(pbar) - (ent(np.array([0.7, 0.2, 0.1])) + ent(np.array([0.1, 0.6, 0.3]))) / 2
    assert np.allclose(out["uncertainty_mi"], [mi0, 0.0])
    # trajectory loss: mean over snapshots and models; snapshot 2 = snapshot 1 with record 0 made certain
    later = logits.copy()
    later[:, 0] = np.log([[0.98, 0.01, 0.01], [0.98, 0.01, 0.01]])
    traj = H.trajectory_loss(np.stack([logits, later]), labels, np.ones((2, 2), dtype=bool))
    assert np.allclose(traj, [(-(np.log(0.7) + np.log(0.1)) / 2 - np.log(0.98)) / 2, -np.log(0.5)])
    # only model 1 for record 0 ('out' selection with model 0 a member): no disagreement left
    masks = np.array([[True, False], [False, True]])
    sel = H.ensemble_hardness(logits, labels, H.select_models(masks, "out"))
    assert np.allclose(sel["loss"], [-np.log(0.1), -np.log(0.5)]) and np.allclose(sel["uncertainty_std"], 0)


def test_per_sample_grad_norms_match_a_per_record_backward_loop():
    torch.manual_seed(0)
    model = create_model("cnn", [1, 8, 8], 4, channels=[4, 6], norm="batch")
    model.train()
    model(torch.randn(16, 1, 8, 8))  # move BatchNorm running stats away from their init
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 4, (10,))
    got = H.per_sample_grad_norms(model, x, y, batch_size=4)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # .grad untouched (torch.func, no backward)
    model.eval()
    want = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        want.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item())
    assert np.allclose(got, want, rtol=1e-4)


def test_mc_dropout_needs_dropout_and_measures_disagreement():
    x, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
    plain = create_model("mlp", [6], 3, hidden=[16])
    with pytest.raises(ValueError, match="dropout > 0"):
        H.mc_dropout_uncertainty(plain, x, y, passes=4)
    drop = create_model("mlp", [6], 3, hidden=[16], dropout=0.5).eval()
    torch.manual_seed(0)
    mi, std = H.mc_dropout_uncertainty(drop, x, y, passes=8)
    torch.manual_seed(0)
    mi2, _ = H.mc_dropout_uncertainty(drop, x, y, passes=8)
    assert mi.shape == (50,) and (mi > 0).all() and (std > 0).all() and np.array_equal(mi, mi2)
    assert not any(m.training for m in drop.modules())  # modes restored (dropout was switched on inside)
    drop.train()
    H.mc_dropout_uncertainty(drop, x, y, passes=2)
    assert all(m.training for m in drop.modules())


def test_correlations_match_scipy_and_skip_constant_inputs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    target = 2 * a + rng.normal(size=200)
    out = H.correlations({"a": a, "flat": np.ones(200), "mono": np.exp(target)}, target)
    assert out["a"]["pearson"] == pytest.approx(stats.pearsonr(a, target).statistic)
    assert out["a"]["spearman_p"] == pytest.approx(stats.spearmanr(a, target).pvalue)
    assert out["flat"]["pearson"] is None
    assert out["mono"]["spearman"] == pytest.approx(1.0)
    sub = H.correlations({"a": a}, target, subset=a > 0)
    assert sub["a"]["n"] == int((a > 0).sum())


# ---------------------------------------------------------------------------------------------- recorder
class NoisyHeadModule(ClassifierModule):
    """A stochastic prediction head (as MID with sampled codes): querying it draws from the global RNG."""

    @torch.no_grad()
    def clean_logits(self, x: torch.Tensor) -> torch.Tensor:
        out = super().clean_logits(x)
        return out + 0.01 * torch.randn_like(out)


def _fit(recorder: DynamicsRecorder | None, module_cls=ClassifierModule, epochs: int = 3, dropout: float = 0.3):
    pl.seed_everything(7, verbose=False)
    model = create_model("mlp", [8], 3, hidden=[16], dropout=dropout)
    module = module_cls(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[recorder] if recorder else [],
    )
    trainer.fit(module, train_dataloaders=TensorBatchLoader(x, y, 16, seed=1))
    return module, x, y


def test_recording_does_not_change_training():
    """The recorder queries a stochastic head at every epoch and before training, and runs MC dropout at the end:
    without the forked RNG the later dropout masks would differ and so would the weights."""
    ref, x, y = _fit(None, NoisyHeadModule)
    rec = DynamicsRecorder(x, y, [0, 1, 2, 3], dtype="float32", mc_dropout=3)
    got, _, _ = _fit(rec, NoisyHeadModule)
    for (name, a), (_, b) in zip(ref.state_dict().items(), got.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert got.artifacts["dynamics/logits"].shape == (4, 64, 1, 3)
    assert got.artifacts["dynamics/epochs"].tolist() == [0, 1, 2, 3]
    assert got.artifacts["dynamics/mc_mi"].shape == (64,)


def test_snapshot_keeps_rng_and_train_mode():
    model = create_model("mlp", [8], 3, hidden=[16], dropout=0.3)
    module = NoisyHeadModule(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    module.train()
    rec = DynamicsRecorder(torch.randn(10, 8), torch.zeros(10, dtype=torch.long), [1, 2])
    state = torch.get_rng_state()
    rec.on_train_epoch_end(SimpleNamespace(current_epoch=0), module)
    assert torch.equal(state, torch.get_rng_state()) and module.model.training
    assert list(rec._snapshots) == [1]


def test_recorder_snapshots_the_model_state_of_each_epoch():
    """Epoch 0 is the untrained model, the last the final model; float32 snapshots equal clean_logits."""
    class Keep(pl.Callback):
        def __init__(self):
            self.states = {}

        def on_train_start(self, trainer, module):
            self.states[0] = copy.deepcopy(module.model.state_dict())

        def on_train_epoch_end(self, trainer, module):
            self.states[trainer.current_epoch + 1] = copy.deepcopy(module.model.state_dict())

    keep = Keep()
    rec = DynamicsRecorder(torch.randn(30, 8), torch.randint(0, 3, (30,)), [0, 2, 3], dtype="float32",
                           grad_norm=True)
    pl.seed_everything(3, verbose=False)
    model = create_model("mlp", [8], 3, hidden=[16])
    module = ClassifierModule(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[keep, rec])
    trainer.fit(module, train_dataloaders=TensorBatchLoader(x, y, 16, seed=1))
    snaps = module.artifacts["dynamics/logits"]
    assert module.artifacts["dynamics/epochs"].tolist() == [0, 2, 3]
    probe = create_model("mlp", [8], 3, hidden=[16]).eval()
    for i, ep in enumerate([0, 2, 3]):
        probe.load_state_dict(keep.states[ep])
        with torch.no_grad():
            assert np.allclose(snaps[i, :, 0], probe(rec.x).numpy(), atol=1e-6), ep
    assert not np.allclose(snaps[0], snaps[-1])
    gn = module.artifacts["dynamics/grad_norm"]
    assert gn.shape == (30,) and np.allclose(gn, H.per_sample_grad_norms(module.model, rec.x, rec.y))


# ---------------------------------------------------------------------------------------------- config
def _setup(cfg, audit=None):
    """The dynamics analysis of a composed config, set up against that run (as the pipeline does before training)."""
    from mia_bench.data.base import ArrayData

    audit = audit or ArrayData(torch.zeros(10, 1, 8, 8), torch.zeros(10, dtype=torch.long))
    [analysis] = build_analyses(cfg.analysis).values()
    analysis.setup(RunInfo(cfg.num_models, cfg.train.epochs, cfg.seed, cfg.model, cfg.evaluation.null_test, audit,
                           [(0, 0, False)]))
    return analysis


@pytest.mark.parametrize(
    "override, match",
    [
        ("analysis.dynamics.fpr=1.5", "fpr=1.5"),
        ("analysis.dynamics.edges=[0.6,0.3]", "edges"),
        ("analysis.dynamics.epochs=[1,99]", "epochs=.*train.epochs=10"),
        ("analysis.dynamics.every=0", "every=0"),
        ("analysis.dynamics.queries=all", "queries='all'"),
        ("analysis.dynamics.dtype=int8", "dtype='int8'"),
        ("analysis.dynamics.hardness.models=some", "hardness.models='some'"),
        ("analysis.dynamics.hardness.mc_dropout=5", "model.dropout=0.0"),
        ("num_models=3", "num_models=3"),
        ("analysis.dynamics.plot_epochs=[3]", "plot_epochs"),
        ("+analysis.dynamics.epoch=3", "unknown key"),
    ],
)
def test_bad_config_names_key_and_value(compose_cfg, override, match):
    cfg = compose_cfg(["analysis=dynamics", "train.epochs=10", override])
    with pytest.raises(ValueError, match=match):
        _setup(cfg)


def test_config_epochs(compose_cfg):
    dc = _setup(compose_cfg(["analysis=dynamics", "train.epochs=12"]))
    assert dc.record_epochs == [5, 10, 12]
    assert dc.settings.fpr == 0.05 and np.allclose(dc.settings.edges, [1 / 3, 2 / 3])
    dc = _setup(compose_cfg(["analysis=dynamics", "train.epochs=12", "analysis.dynamics.epochs=[2,4]",
                            "analysis.dynamics.initial=true"]))
    assert dc.record_epochs == [0, 2, 4, 12]
    dc = _setup(compose_cfg(["analysis=dynamics", "model.dropout=0.2", "analysis.dynamics.hardness.mc_dropout=4"]))
    assert dc.settings.hardness.mc_dropout == 4


@pytest.mark.parametrize("name, key, value", [
    ("dynamics_sgd_vs_sam", "defense", "none,sam"), ("dynamics_cnn_vs_wrn", "model", "cnn,wrn28_2")
])
def test_experiment_configs_compose_and_sweep(compose_cfg, name, key, value):
    from mia_bench.config import compose

    cfg = compose_cfg([f"experiment={name}"])
    assert _setup(cfg).record_epochs[-1] == cfg.train.epochs
    assert cfg.dataset.name == "cifar10" and cfg.num_models >= 16
    hcfg = compose([f"experiment={name}"], return_hydra_config=True)
    assert hcfg.hydra.sweeper.params[key] == value


# ---------------------------------------------------------------------------------------------- end to end
def test_analysis_of_synthetic_snapshots_writes_every_output(tmp_path):
    """The analysis alone, on snapshots where members pull away from non-members epoch by epoch: the vulnerable
    share grows, transitions are counted for every record, and every file is written."""
    from mia_bench.dynamics.analysis import analyze, write_outputs
    from mia_bench.dynamics.config import DynamicsSettings

    rng = np.random.default_rng(0)
    k, e, n, c = 16, 3, 120, 4
    masks = np.zeros((k, n), bool)
    for j in range(k // 2):
        half = rng.permutation(n)[: n // 2]
        masks[2 * j, half] = True
        masks[2 * j + 1] = ~masks[2 * j]
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(k, e, n, 1, c))
    gap = np.where(rng.random(n) < 0.3, 8.0, 0.0)  # about 30% of the records become easy to tell apart
    for epoch in range(e):
        logits[:, epoch, np.arange(n), 0, labels] += masks * gap * epoch / (e - 1)
    settings = DynamicsSettings.parse({"hardness": {"grad_norm": False}})
    report, records = analyze(logits.astype(np.float32), [1, 2, 3], labels, masks, settings, final_epoch=3)
    report["config"]["plot_epochs"] = [1, 3]
    write_outputs(report, records, tmp_path)
    for name in ("dynamics.json", "dynamics_records.npz", "dynamics_plane.png", "dynamics_transitions.png",
                 "dynamics_com.png", "dynamics_correlations.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    shares = report["per_epoch"]["vulnerable_share"]
    assert shares[0] < 0.05 < shares[1] < shares[2]
    vulnerable, easy = records["final_vulnerable"], gap > 0
    assert (vulnerable & easy).sum() >= 0.9 * easy.sum() and (vulnerable & ~easy).sum() <= 0.02 * n
    assert np.array(report["transitions"]["counts"]).sum() == (e - 1) * n


@pytest.mark.slow
def test_tiny_run_writes_every_output(compose_cfg, tmp_path):
    from mia_bench.pipeline import run

    overrides = [*TINY, "analysis=dynamics", "analysis.dynamics.every=1", "analysis.dynamics.dtype=float32",
                 "analysis.dynamics.initial=true", "attack=fast", "logger=none"]
    records = run(compose_cfg(overrides))
    for name in ("dynamics.json", "dynamics_records.npz", "dynamics_plane.png", "dynamics_transitions.png",
                 "dynamics_com.png", "dynamics_correlations.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    report = json.loads((tmp_path / "dynamics.json").read_text())
    assert report["epochs"] == [0, 1, 2, 3]
    trans = report["transitions"]
    assert np.array(trans["counts"]).shape == (3, 9, 9) and np.array(trans["counts"]).sum() == 3 * 1300
    rec = np.load(tmp_path / "dynamics_records.npz")
    assert rec["tpr"].shape == (4, 1300) and rec["cell"].shape == (4, 1300)
    assert np.array_equal(V.assign_cells(rec["tpr"].astype(float), rec["fpr"].astype(float), EDGES), rec["cell"])
    assert {"hardness_loss", "hardness_grad_norm", "hardness_uncertainty_mi"} <= set(rec.files)
    assert report["summary"]["record_seconds_snapshots"] > 0 and report["summary"]["record_seconds_hardness"] > 0
    for r in records:
        assert r["dynamics/epochs_recorded"] == 4 and 0 <= r["dynamics/vulnerable_share_final"] <= 1
        assert r["dynamics/realised_fpr_final"] <= 0.05 + 1e-12
    # per-record rates average back to the global rates: mean FPR_i over OUT pairs is the realised FPR
    # (paired masks: every record has K/2 OUT models, so the plain mean over records is the pair mean)
    assert np.mean(rec["fpr"][-1]) == pytest.approx(report["per_epoch"]["realised_fpr"][-1])
    # the final snapshot is the deployed model: it equals the clean query of the run's signals (no predictor)
    sig = Signals.load(tmp_path / "signals.npz")
    lira = LiRA(online=True)
    scores = V.loo_scores(sig.logits[:, :, :1], sig.labels, sig.masks, lira)
    tpr, fpr, _, _ = V.per_record_rates(scores, sig.masks, 0.05)
    assert np.allclose(tpr, rec["tpr"][-1]) and np.allclose(fpr, rec["fpr"][-1])
    # the snapshots travel with the cached models: a second run trains nothing and finds the same dynamics
    again = tmp_path / "again"
    records2 = run(compose_cfg(overrides, output_dir=again))
    assert records2[0]["models_from_cache"] == 4
    report2 = json.loads((again / "dynamics.json").read_text())
    assert report2["summary"].pop("analysis_seconds") > 0 and report["summary"].pop("analysis_seconds") > 0
    assert report2 == report  # recorder timings too: they come with the cached artifacts


def test_recording_key_covers_only_what_is_recorded(compose_cfg):
    from mia_bench.cache.keys import describe_recipe

    def recording_key(cfg):
        """What the analysis adds to the models' cache keys (as the pipeline passes it to describe_recipe)."""
        recorded = {"dynamics": _setup(cfg).recorded()} if cfg.get("analysis") else {}
        return describe_recipe(cfg, recorded).get("analysis")

    base = recording_key(compose_cfg(["analysis=dynamics", "train.epochs=12"]))
    assert recording_key(compose_cfg(["train.epochs=12"])) is None
    same = recording_key(compose_cfg(["analysis=dynamics", "train.epochs=12", "analysis.dynamics.fpr=0.1",
                                      "analysis.dynamics.edges=[0.5]"]))
    assert same == base
    other = recording_key(compose_cfg(["analysis=dynamics", "train.epochs=12", "analysis.dynamics.every=2"]))
    assert other != base
    assert recording_key(compose_cfg(["analysis=dynamics", "train.epochs=12", "evaluation.null_test=true"])) != base
