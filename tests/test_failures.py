"""Faults and what the tool does about them (README: Failure modes): signals, full disks, unwritable caches, shared
caches and outputs, concurrent runs. Each test fails on the version before the fix."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY

CELL = ["num_models=8", "train.epochs=100", "train.engine=sequential", "evaluation.targets=2", "attack=[loss]",
        "evaluation.n_bootstrap=20", "logger=none", "trainer.enable_progress_bar=false"]


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIA_BENCH_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, "-m", "mia_bench", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stored(tmp_path: Path) -> int:
    return len(list((tmp_path / "cache" / "models").glob("*/manifest.json")))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_training_exits_non_zero_says_what_was_kept_and_the_rerun_resumes(tmp_path, sig):
    proc = _start(tmp_path, *CELL, "hydra.run.dir=run1")
    deadline = time.time() + 120
    while _stored(tmp_path) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, out[-2000:])
    kept = _stored(tmp_path)
    assert f"interrupted by {signal.Signals(sig).name} while training" in out, out[-2000:]
    assert f"of 8 are stored in the cache {tmp_path / 'cache'}; run the same command again" in out
    assert "python -m mia_bench" in out
    assert "Traceback" not in out
    assert not (tmp_path / "run1" / "metrics.json").exists()
    proc = _start(tmp_path, *CELL, "hydra.run.dir=run2")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    records = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert records[0]["models_from_cache"] == kept >= 1



@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_starting_exits_128_plus_the_signal_without_a_traceback(tmp_path, sig):
    """Before any run (the libraries still loading, or Hydra setting up) a signal still gives 128 + n and a line,
    not Python's KeyboardInterrupt traceback and -2 (or a silent 0 for SIGTERM)."""
    for delay in (0.3, 2.5):
        proc = _start(tmp_path, *CELL, f"hydra.run.dir=run{delay}")
        time.sleep(delay)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, (delay, proc.returncode, out[-2000:])
        assert f"interrupted by {signal.Signals(sig).name}" in out and "Traceback" not in out, out[-2000:]


def test_a_signal_whose_exception_python_swallowed_still_stops_the_run(compose_cfg, monkeypatch, caplog, tmp_path):
    """Python drops an exception raised in a ``__del__`` (Lightning's profiler has one): a signal landing there
    must still stop the run at its next stage, with 128 + n, instead of the run finishing with status 0."""
    import mia_bench.__main__ as entry
    import mia_bench.pipeline as pipeline

    load = pipeline.load_data

    def load_then_swallowed_signal(*args, **kwargs):
        out = load(*args, **kwargs)
        try:
            entry._raise_interrupted(signal.SIGTERM, None)
        except entry.Interrupted:
            pass  # what Python does to an exception raised inside __del__
        return out

    monkeypatch.setattr(pipeline, "load_data", load_then_swallowed_signal)
    cfg = compose_cfg([*TINY, "attack=[loss]", "logger=none"], output_dir=tmp_path / "run")
    with caplog.at_level(logging.ERROR, logger="mia_bench"):
        assert entry.run_job(cfg, {}) == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM while loading the data: nothing was stored yet" in caplog.text
    assert not entry.RECEIVED and not (tmp_path / "run" / "metrics.json").exists()

@pytest.mark.parametrize(("argv", "progress", "said", "status"), [
    ([], {"started": 0, "finished": 0}, "before the run started: nothing was stored", 130),
    ([], {"started": 1, "finished": 1}, "after the run finished: its outputs are complete", 130),
    (["-m"], {"started": 1, "finished": 1}, "finished jobs keep their outputs", 130),
])  # fmt: skip
def test_a_signal_outside_a_run_says_what_the_process_had_done(monkeypatch, caplog, argv, progress, said, status):
    import mia_bench.__main__ as entry

    def interrupted():
        raise entry.Interrupted(signal.SIGINT)

    monkeypatch.setattr(entry, "_hydra_main", interrupted)
    monkeypatch.setattr(entry, "PROGRESS", progress)
    monkeypatch.setattr(sys, "argv", ["mia_bench", *argv])
    with caplog.at_level(logging.ERROR, logger="mia_bench"), pytest.raises(SystemExit) as exit_:
        entry.main()
    assert exit_.value.code == status and said in caplog.text

# ---------------------------------------------------------------------------------------------------- disk faults
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_cache_write_that_fails_for_any_reason_is_a_warning_and_the_run_goes_on(compose_cfg, caplog, monkeypatch):
    """A full disk makes torch.save raise RuntimeError (not an OSError); storing must still only warn."""
    import torch

    from mia_bench.pipeline import run

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file: "
                           "file write failed")

    monkeypatch.setattr(torch, "save", full)
    with caplog.at_level(logging.WARNING):
        records = run(compose_cfg([*TINY, "attack=[loss]", "logger=none"]))
    assert records and "cannot write cache entry" in caplog.text and "RuntimeError" in caplog.text
    assert "continuing without caching it" in caplog.text


def test_an_output_that_cannot_be_written_is_one_error_naming_the_path_and_the_free_space(compose_cfg, caplog,
                                                                                           monkeypatch, tmp_path):
    from mia_bench.__main__ import run_job

    monkeypatch.setattr(tempfile, "mkstemp", _enospc)  # every atomic output write: config.yaml comes first
    with caplog.at_level(logging.ERROR, logger="mia_bench"):
        assert run_job(compose_cfg([*TINY, "attack=[loss]", "logger=none"]), {}) == 2
    line = caplog.text
    assert f"WriteError: [Errno {errno.ENOSPC}] cannot write {tmp_path / 'config.yaml'}: No space left" in line
    assert "GiB free on its file system" in line


# ------------------------------------------------------------------------------------------- concurrent runs, sweeps
def test_a_run_never_writes_into_a_folder_holding_another_runs_results_or_in_use(compose_cfg, tmp_path):
    import fcntl

    from mia_bench.pipeline import run

    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text("[]")
    with pytest.raises(ValueError, match=f"paths.output_dir={done} already holds the results of another run"):
        run(compose_cfg([*TINY, "attack=[loss]", "logger=none"], output_dir=done))
    busy = tmp_path / "busy"
    busy.mkdir()
    fd = os.open(busy / ".mia_bench.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds the folder
    try:
        with pytest.raises(ValueError, match="another run is writing into this folder now"):
            run(compose_cfg([*TINY, "attack=[loss]", "logger=none"], output_dir=busy))
    finally:
        os.close(fd)
    assert sorted(p.name for p in done.iterdir()) == ["metrics.json"]  # the refused run wrote nothing there
    assert sorted(p.name for p in busy.iterdir()) == [".mia_bench.lock"]  # the other run's lock is left alone
    fresh = tmp_path / "fresh"
    run(compose_cfg([*TINY, "attack=[loss]", "logger=none"], output_dir=fresh))
    assert not (fresh / ".mia_bench.lock").exists() and (fresh / "metrics.json").exists()


def test_run_folders_carry_the_process_id_and_job_folders_stay_short():
    from mia_bench.config import compose, short_dirname

    hydra = compose([], return_hydra_config=True).hydra
    assert str(hydra.run.dir).endswith(f"_{os.getpid()}") and str(hydra.sweep.dir).endswith(f"_{os.getpid()}")
    long = ",".join(f"attack.lira_online.option{i}=value{i}" for i in range(40)) + ",cache.dir=/a/b/c"
    name = short_dirname(long)
    assert len(name) <= 64 and "/" not in name and name == short_dirname(long)
    assert short_dirname(long + "x") != name and short_dirname("defense=none") == "defense=none"


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_runs_the_others(tmp_path):
    attacks = "attack=[loss,confidence,entropy,modified_entropy,lira_online,lira_offline,lira_online_fixed_var," \
              "lira_offline_fixed_var,rmia,rmia_offline,label_only]"
    proc = _start(tmp_path, "-m", "num_models=3,4", "train.epochs=2", "evaluation.targets=1", attacks, "logger=none",
                  "trainer.enable_progress_bar=false", f"cache.dir={tmp_path / 'a' / 'long' / 'absolute' / 'path'}",
                  "hydra.sweep.dir=sweep")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0  # the sweep says a job failed ...
    jobs = sorted((tmp_path / "sweep").iterdir())
    names = [j.name for j in jobs if j.is_dir()]
    assert len(names) == 2 and all(len(n) <= 80 for n in names)
    failed = json.loads((tmp_path / "sweep" / names[0] / "failed.json").read_text())
    assert failed["error"] == "ValueError" and "num_models=3" in failed["message"]
    assert (tmp_path / "sweep" / names[1] / "metrics.json").exists()  # ... and the other job ran
    from mia_bench.report.__main__ import main as report

    assert report([str(tmp_path / "sweep"), "--no-plots"]) == 0
    table = (tmp_path / "sweep" / "privacy_utility.md").read_text()
    assert "1 job(s) failed" in table and "num_models=3" in table


# ------------------------------------------------------------------------------------------ shared caches, shards
def test_cache_entries_and_outputs_follow_the_umask_so_they_can_be_shared(tmp_path):
    from mia_bench.atomic import write_json
    from mia_bench.cache import EntryStore

    old = os.umask(0o022)
    try:
        store = EntryStore(tmp_path / "cache")
        assert store.put("models", "k1", {"a.bin": lambda f: f.write(b"x")}, "entry", {})
        entry = store.path("models", "k1")
        assert entry.stat().st_mode & 0o777 == 0o755
        assert (entry / "a.bin").stat().st_mode & 0o777 == 0o644
        assert (entry / "manifest.json").stat().st_mode & 0o777 == 0o644
        write_json(tmp_path / "metrics.json", [])
        assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_an_unreadable_entry_is_reported_as_unreadable_and_kept(tmp_path, monkeypatch, caplog):
    """Another user's entry the process may not read is not 'corrupt', and is not removed (root reads every file,
    so the permission error is simulated)."""
    from mia_bench.cache import EntryStore
    from mia_bench.cache import store as store_mod

    store = EntryStore(tmp_path / "cache")
    store.put("models", "k1", {"a.bin": lambda f: f.write(b"x")}, "entry", {})

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(store_mod, "_file_sha256", denied)
    with caplog.at_level(logging.WARNING):
        assert store.get("models", "k1") is None
    assert "is unreadable" in caplog.text and "corrupt" not in caplog.text
    assert store.has("models", "k1")


def test_an_entry_that_cannot_be_removed_is_not_said_to_be_removed(tmp_path, monkeypatch, caplog):
    from mia_bench.cache import EntryStore

    store = EntryStore(tmp_path / "cache")
    store.put("models", "k1", {"a.bin": lambda f: f.write(b"x")}, "entry", {})
    (store.path("models", "k1") / "a.bin").write_bytes(b"damaged")
    monkeypatch.setattr(EntryStore, "remove_path", staticmethod(lambda path: False))
    with caplog.at_level(logging.WARNING):
        assert store.get("models", "k1") is None
    assert "could not be removed" in caplog.text and "removed it" not in caplog.text


def test_a_shard_job_that_stored_nothing_fails_naming_the_models(compose_cfg, tmp_path, monkeypatch, caplog):
    from mia_bench.__main__ import run_job
    from mia_bench.cache import EntryStore

    monkeypatch.setattr(EntryStore, "put", lambda self, *a, **k: False)  # a cache that cannot be written
    cfg = compose_cfg([*TINY, "attack=[loss]", "logger=none", "shard.count=2", "shard.index=1"])
    with caplog.at_level(logging.ERROR, logger="mia_bench"):
        assert run_job(cfg, {}) == 2
    assert "ShardNotStored: shard 1/2: models [1, 3] are not in the cache" in caplog.text
    assert not (tmp_path / "shard.json").exists()


# -------------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("override, message", [
    ("signals.dtype=float64", "signals.dtype='float64': expected float16 or float32"),
    ("evaluation.n_bootstrap=-1", "evaluation.n_bootstrap=-1: expected a whole number of resamples"),
    ("evaluation.confidence=1.5", "evaluation.confidence=1.5: expected a level in (0, 1)"),
    ("train.epochs=0", "train.epochs=0: expected a whole number of epochs >= 1"),
    ("num_models=abc", "num_models='abc': expected a whole number of models >= 2"),
    ("num_models=3", "num_models=3: the paired mask scheme needs an even number of models"),
    ("evaluation.targets=some", "evaluation.targets='some': expected auto, all"),
    ("evaluation.delta=2", "evaluation.delta=2: expected auto or a delta in [0, 1)"),
    ("evaluation.ci_method=bootstrap", "evaluation.ci_method='bootstrap': expected auto or bca or percentile"),
])
def test_every_run_setting_is_checked_before_any_data_loads(compose_cfg, monkeypatch, override, message):
    import mia_bench.pipeline as pipeline

    def never(*args, **kwargs):
        raise AssertionError("the data loaded before the settings were checked")

    monkeypatch.setattr(pipeline, "load_data", never)
    with pytest.raises(ValueError) as err:
        pipeline.run(compose_cfg([*TINY, override]))
    assert message in str(err.value)


def test_the_default_targets_work_for_any_valid_number_of_models(compose_cfg):
    from mia_bench.attacks.evaluate import resolve_targets

    assert resolve_targets("auto", 4) == [0, 1, 2, 3] and resolve_targets("auto", 64) == list(range(8))
    records = __import__("mia_bench.pipeline").pipeline.run(
        compose_cfg(["num_models=4", "train.epochs=1", "attack=[loss]", "logger=none",
                     "trainer.enable_progress_bar=false"]))
    assert records[0]["n_targets"] == 4


def test_a_bad_value_fails_before_a_wandb_run_opens(compose_cfg, monkeypatch):
    import mia_bench.report.wandb_run as wandb_run
    from mia_bench.__main__ import run_job

    opened = []
    monkeypatch.setattr(wandb_run, "start_run", lambda *a, **k: opened.append(1))
    assert run_job(compose_cfg([*TINY, "logger=wandb", "evaluation.targets=99"]), {}, hydra_cfg={}) == 2
    assert opened == []


# ---------------------------------------------------------------------------------------- non-finite data, diverging
def test_nan_inputs_fail_when_the_dataset_loads_naming_the_file_and_the_count(compose_cfg, tmp_path):
    import numpy as np

    from mia_bench.pipeline import run

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 6)).astype(np.float32), np.arange(300) % 3
    x[[5, 7], 2] = np.nan
    x[9, 0] = np.inf
    np.savez(tmp_path / "data.npz", x=x, y=y)
    with pytest.raises(ValueError, match=rf"dataset npz \({tmp_path / 'data.npz'}\): 3 NaN or infinite input values "
                                         r"in 3 records of its train split"):
        run(compose_cfg([*TINY, "dataset=npz", f"dataset.loader.path={tmp_path / 'data.npz'}"]))


def test_a_diverging_model_stops_at_once_naming_it_and_is_never_cached(compose_cfg, tmp_path):
    from mia_bench.cache.store import EntryStore
    from mia_bench.pipeline import run
    from mia_bench.training.module import TrainingDiverged

    for engine in ("sequential", "ensemble"):
        cfg = compose_cfg([*TINY, "train.epochs=5", "train.module.optimizer.lr=1e30", f"train.engine={engine}",
                           "attack=[loss]", "logger=none"], output_dir=tmp_path / engine)
        with pytest.raises(TrainingDiverged, match=r"model 0: the training loss became nan in epoch 1; the learning "
                                                   r"rate \(train.module.optimizer.lr=1e\+30\)"):
            run(cfg)
        assert not EntryStore(cfg.cache.dir).scan(), engine  # nothing stored


def test_a_loss_that_explodes_but_stays_finite_ends_in_a_warning_under_the_table(compose_cfg, caplog):
    from mia_bench.pipeline import run

    with caplog.at_level(logging.WARNING):
        records = run(compose_cfg([*TINY, "train.module.optimizer.lr=50", "attack=[loss]", "logger=none"]))
    assert "diverged or did not learn" in records[0]["warnings"] and "diverged" in caplog.text
