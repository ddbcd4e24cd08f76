"""W&B offline: a cell's run is grouped by sweep, tagged with its choices, and carries config, metrics, table and ROC
plot, all written to disk without network (``wandb sync`` uploads them later)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from mia_bench.pipeline import run
from mia_bench.report.wandb_run import choice_tags, finish_failed, run_identity, start_run
from tests.conftest import TINY

wandb = pytest.importorskip("wandb")


def read_offline_run(path: Path) -> tuple[dict, dict]:
    """(run record fields, final summary) of an offline ``run-*.wandb`` file, read independently of wandb's own
    tooling: the file is a LevelDB-style log (7-byte header, 32 KiB blocks of records split into FULL / FIRST /
    MIDDLE / LAST chunks with a 7-byte header each) of ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, block = path.read_bytes(), 7, b"", 32768
    assert data[:4] == b":W&B"
    run, summary = {}, {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind not in (1, 4):  # FIRST / MIDDLE chunk: the record continues
            continue
        rec = pb.Record()
        rec.ParseFromString(buf)
        buf = b""
        which = rec.WhichOneof("record_type")
        if which == "run":
            run = {
                "group": rec.run.run_group,
                "name": rec.run.display_name,
                "tags": list(rec.run.tags),
                "config": {i.key: json.loads(i.value_json) for i in rec.run.config.update},
            }
        elif which == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update})
        elif which == "artifact":  # kept with the run's fields: name, type and the paths in its manifest
            run.setdefault("artifacts", []).append(
                {"name": rec.artifact.name, "type": rec.artifact.type,
                 "files": [c.path for c in rec.artifact.manifest.contents],
                 "refs": [c.ref for c in rec.artifact.manifest.contents if c.ref]})
    return run, summary


def _hydra_cfg(mode, out, sweep="multirun_outputs/2026-01-02_03-04-05", overrides="defense=none"):
    job = {"override_dirname": overrides}
    return OmegaConf.create({"mode": mode, "sweep": {"dir": sweep}, "runtime": {"output_dir": str(out)}, "job": job})


def test_run_identity_groups_by_sweep_and_tags_by_choice(tmp_path):
    lg = OmegaConf.create({"group": None, "name": None, "tags": ["mine"]})
    choices = {"dataset": "digits", "defense": "none", "attack": "[loss,rmia]", "analysis": None}
    multi = run_identity(_hydra_cfg(RunMode.MULTIRUN, tmp_path / "3_defense=none"), choices, lg)
    assert multi == {
        "group": "2026-01-02_03-04-05",  # every job of one sweep in one group
        "name": "3_defense=none",  # the job folder
        "tags": ["attack=[loss,rmia]", "dataset=digits", "defense=none", "mine"],
    }
    single = run_identity(_hydra_cfg(RunMode.RUN, tmp_path / "12-30-00", overrides=""), choices, lg)
    assert single["group"] == "digits/none" and single["name"] == "12-30-00"  # a single run: grouped by its cell
    noisy = {**choices, "paths": "default", "logger": "wandb", "trainer": "default"}
    assert choice_tags(noisy) == choice_tags(choices)  # where and how it logs is no tag
    assert run_identity(_hydra_cfg(RunMode.RUN, tmp_path / "x"), choices, lg)["name"] == "defense=none"
    own = OmegaConf.create({"group": "paper", "name": "mine", "tags": []})
    assert run_identity(_hydra_cfg(RunMode.MULTIRUN, tmp_path), choices, own)["group"] == "paper"
    assert choice_tags({"x": "y" * 100}) == ["x=" + "y" * 62]  # W&B's 64-character limit


def test_offline_run_carries_group_tags_config_metrics_table_and_roc(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "sweep_x" / "0_none"  # (no "=" in a path given to compose)
    cfg = compose_cfg([*TINY, "logger=wandb", "attack=[loss,lira_online]", "figures=true"], output_dir=out)
    choices = {"dataset": "digits", "model": "mlp", "defense": "none", "attack": "[loss,lira_online]"}
    started = start_run(cfg, choices, _hydra_cfg(RunMode.MULTIRUN, out, sweep=str(tmp_path / "sweep_x")))
    assert started.group == "sweep_x" and started.name == "0_none"
    records = run(cfg, choices)
    assert wandb.run is None  # the pipeline finished the run

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    meta, summary = read_offline_run(next(run_dir.glob("run-*.wandb")))
    assert meta["group"] == "sweep_x" and meta["name"] == "0_none"
    assert {"dataset=digits", "defense=none", "model=mlp", "attack=[loss,lira_online]"} <= set(meta["tags"])
    assert meta["config"]["evaluation"]["n_bootstrap"] == 20  # the resolved config
    assert meta["config"]["choices"]["defense"] == "none"
    by_attack = {r["attack"]: r for r in records}
    for attack in ("loss", "lira_online"):
        for key in ("auc_mean", "tpr_at_fpr_0.01_mean", "tpr_at_fpr_0.01_ci_high"):
            assert summary[f"{attack}/{key}"] == pytest.approx(by_attack[attack][key])
    assert summary["test_acc_mean"] == pytest.approx(records[0]["test_acc_mean"])  # the cell's utility, unprefixed
    assert {f"model{k}-train/loss" for k in range(4)} <= set(summary)  # the K models' curves in the same run
    (table_file,) = run_dir.glob("files/media/table/metrics_*.table.json")
    table = json.loads(table_file.read_text())
    col = table["columns"].index("auc_mean")
    assert sorted(r[col] for r in table["data"]) == sorted(r["auc_mean"] for r in records)
    (png,) = run_dir.glob("files/media/images/roc_*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A job that fails leaves no open run behind for the next job of a reused worker.
    second = start_run(cfg, choices, _hydra_cfg(RunMode.MULTIRUN, out))
    assert second.id != started.id
    finish_failed()
    assert wandb.run is None


@pytest.mark.slow
def test_a_cached_rerun_still_gives_wandb_every_models_curves(compose_cfg, tmp_path, monkeypatch):
    """Models from the cache bring their training curves: the rerun's offline run holds model<k>-train/loss too, and
    the new figures (pooled ROC, most exposed records) as images."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    choices = {"dataset": "digits", "model": "mlp", "defense": "none", "attack": "loss"}
    for name in ("first", "again"):
        out = tmp_path / name
        monkeypatch.setenv("WANDB_DIR", str(tmp_path / f"wandb_{name}"))
        cfg = compose_cfg([*TINY, "logger=wandb", "attack=loss", "figures=true"], output_dir=out)
        start_run(cfg, choices, _hydra_cfg(RunMode.RUN, out))
        records = run(cfg, choices)
    assert records[0]["models_from_cache"] == 4
    (run_dir,) = (tmp_path / "again" / "wandb").glob("offline-run-*")
    meta, summary = read_offline_run(next(run_dir.glob("run-*.wandb")))
    assert {f"model{k}-train/loss" for k in range(4)} <= set(summary)
    images = {p.name.split("_")[0] for p in run_dir.glob("files/media/images/*.png")}
    assert {"roc", "pooled", "exposed"} <= images
    assert list(run_dir.glob("files/media/table/roc_chart_table_*.table.json"))  # the interactive ROC's data
    artifact = next(a for a in meta["artifacts"] if a["type"] == "mia_bench-cell")  # (W&B adds its own too)
    assert {"metrics.json", "per_target.json", "scores.npz", "signals.npz"} <= set(artifact["files"])
    assert artifact["refs"] == [f"file://{(tmp_path / 'again' / 'signals.npz').resolve()}"]  # by reference
