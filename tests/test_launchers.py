"""Launchers: the configs compose into the plugins' launchers (SLURM down to the sbatch script), a local parallel
multirun of four tiny jobs completes, and the GPU lease gives every job its own device."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mia_bench import gpu_pool
from mia_bench.config import compose
from mia_bench.gpu_pool import device_names, job_device, lease_device
from tests.conftest import ROOT, TINY


def _compose_hydra(overrides):
    return compose(overrides, return_hydra_config=True)


def test_local_and_gpu_launchers_compose_to_joblib(monkeypatch):
    local = _compose_hydra(["hydra/launcher=local"]).hydra
    assert local.launcher._target_.endswith("JoblibLauncher")
    assert local.launcher.n_jobs == -1 and local.launcher.batch_size == "1"
    assert "MIA_BENCH_GPU_POOL" not in local.job.env_set  # CPU jobs never lease

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("MIA_BENCH_GPU_LOCKS", "/tmp/locks_x")
    gpus = _compose_hydra(["hydra/launcher=gpus"]).hydra
    launcher = instantiate(gpus.launcher)
    assert type(launcher).__name__ == "JoblibLauncher"
    assert launcher.joblib["n_jobs"] == 3  # one job per visible GPU
    assert gpus.job.env_set.MIA_BENCH_GPU_POOL == "/tmp/locks_x"  # what makes each job lease a GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert _compose_hydra(["hydra/launcher=gpus"]).hydra.launcher.n_jobs == 1  # no GPU: still a valid pool


def test_slurm_launcher_builds_a_one_gpu_per_task_sbatch_array(tmp_path, monkeypatch):
    """Down to the sbatch script, without SLURM: a fake `srun` on PATH, and submitit's array submission stopped."""
    import submitit

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    cfg = _compose_hydra(["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    seen = {}

    class Submitted(Exception):
        pass

    def fake_map_array(self, fn, *args):
        seen["executor"], seen["jobs"] = self, len(args[0])
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    with pytest.raises(Submitted):
        launcher.launch([["defense=none"], ["defense=dropout"], ["defense=mixup"]], 0)
    slurm = seen["executor"]._executor
    assert seen["jobs"] == 3
    assert slurm.parameters["array_parallelism"] == 64
    script = slurm._make_submission_file_text("python -m mia_bench", "uid")
    for line in ("--gpus-per-node=1", "--ntasks-per-node=1", "--nodes=1", "--time=240", "--cpus-per-task=8"):
        assert f"#SBATCH {line}\n" in script
    assert "--partition" not in script  # partition: null = the cluster's default

    local = instantiate(_compose_hydra(["hydra/launcher=slurm_local"]).hydra.launcher)
    assert type(local).__name__ == "LocalLauncher"


@pytest.mark.slow
def test_local_parallel_multirun_of_four_tiny_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    defenses = ["none", "dropout", "label_smoothing", "weight_decay"]
    cmd = [
        sys.executable, "-m", "mia_bench", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
        f"defense={','.join(defenses)}", *TINY, "num_models=2", "evaluation.targets=1", "train.epochs=1",
        "attack=loss", "logger=none", f"hydra.sweep.dir={sweep}", f"data.root={tmp_path / 'data'}",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in res.stdout + res.stderr  # the joblib launcher ran the sweep
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        records = json.loads((job / "metrics.json").read_text())
        assert (job / ".hydra" / "overrides.yaml").exists() and (job / "config.yaml").exists()
        seen.add(records[0]["choice/defense"])
        assert f"defense={records[0]['choice/defense']}" in job.name  # self-describing job folder
        assert records[0]["choice/attack"] == "loss"
    assert seen == set(defenses)


# ---- GPU lease (fake device counts: the lease logic needs no GPU) ----


def _holder(lock_dir: str, n_devices: int, hold_s: float, out: str) -> None:
    """One job: lease a device, prove exclusive use with an O_EXCL marker, hold it, write what it got."""
    with lease_device(n_devices, lock_dir, poll_s=0.02) as i:
        marker = Path(lock_dir) / f"held_{i}"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            Path(out).write_text(f"{i} CLASH")
            return
        time.sleep(hold_s)
        os.close(fd)
        marker.unlink()
    Path(out).write_text(str(i))


def test_lease_never_gives_one_gpu_to_two_jobs_and_uses_every_gpu(tmp_path):
    n_jobs, n_gpus = 7, 3
    ctx = mp.get_context("fork")
    outs = [tmp_path / f"job{j}.txt" for j in range(n_jobs)]
    procs = [ctx.Process(target=_holder, args=(str(tmp_path), n_gpus, 0.3, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    got = [o.read_text() for o in outs]
    assert not [g for g in got if "CLASH" in g], got  # never two holders of one id at a time
    assert sorted(set(map(int, got))) == [0, 1, 2]  # jobs >= GPUs: every GPU used


def test_lease_is_released_on_error_and_waiters_get_it(tmp_path):
    with pytest.raises(RuntimeError):
        with lease_device(1, tmp_path):
            raise RuntimeError("job failed")
    with lease_device(1, tmp_path, timeout_s=0) as i:  # free again at once
        assert i == 0
        with pytest.raises(TimeoutError, match="no free GPU among 1"):
            with lease_device(1, tmp_path, poll_s=0.02, timeout_s=0.2):
                pass

    got = []
    hold = lease_device(1, tmp_path)
    hold.__enter__()
    waiter = threading.Thread(target=lambda: got.append(lease_device(1, tmp_path, poll_s=0.02).__enter__()))
    waiter.start()
    time.sleep(0.2)
    assert got == []  # all GPUs held: the job waits
    hold.__exit__(None, None, None)
    waiter.join(5)
    assert got == [0]


def test_lease_prefers_the_gpu_the_process_held_last(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_pool, "_last_leased", None)
    with lease_device(3, tmp_path) as a, lease_device(3, tmp_path) as b:
        assert (a, b) == (0, 1)
    with lease_device(3, tmp_path) as c:  # all free: the last one held (1) first, so one CUDA context per worker
        assert c == 1


def test_lock_names_follow_cuda_visible_devices():
    assert device_names(2, "") == ["0", "1"]
    assert device_names(2, "5,7") == ["5", "7"]  # physical ids: sweeps with different subsets still agree
    assert device_names(2, "GPU-aa,GPU-bb") == ["GPU-aa", "GPU-bb"]


def test_job_device_points_the_trainer_at_the_leased_gpu(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"trainer": {"accelerator": "auto", "devices": 1}})
    with job_device(cfg.trainer) as i:  # no MIA_BENCH_GPU_POOL: nothing happens
        assert i is None and cfg.trainer.devices == 1

    set_to = []
    monkeypatch.setenv("MIA_BENCH_GPU_POOL", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_to.append)
    monkeypatch.setattr(gpu_pool, "_last_leased", None)
    with lease_device(2, tmp_path):  # another job holds GPU 0
        with job_device(cfg.trainer) as i:
            assert i == 1 and cfg.trainer.devices == [1] and set_to == [1]
            with pytest.raises(TimeoutError):  # both GPUs are now held
                with lease_device(2, tmp_path, timeout_s=0):
                    pass
    with lease_device(2, tmp_path, timeout_s=0):  # released after the job
        pass

    cpu = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1}})
    with job_device(cpu.trainer) as i:  # trainer forced to CPU: no lease
        assert i is None and cpu.trainer.devices == 1


def test_two_jobs_can_share_a_gpu(tmp_path, monkeypatch):
    """jobs_per_gpu=2: twice the jobs, two leases per GPU, spread before shared."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    hydra_cfg = _compose_hydra(["hydra/launcher=gpus", "jobs_per_gpu=2"]).hydra
    assert hydra_cfg.launcher.n_jobs == 4
    monkeypatch.setattr(gpu_pool, "_last_leased", None)
    with lease_device(2, tmp_path, slots=2) as a, lease_device(2, tmp_path, slots=2) as b:
        assert {a, b} == {0, 1}  # one job per GPU first
        with lease_device(2, tmp_path, slots=2) as c, lease_device(2, tmp_path, slots=2) as d:
            assert sorted([a, b, c, d]) == [0, 0, 1, 1]
            with pytest.raises(TimeoutError, match="2 x 2"):
                with lease_device(2, tmp_path, slots=2, timeout_s=0):
                    pass
    with pytest.raises(ValueError, match="jobs_per_gpu='none'"):
        gpu_pool.jobs_per_gpu("none")


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu_with_tiny_sizes():
    """benchmarks/gpu_check.py --tiny: every model both ways, the launcher with two jobs per GPU, a projection."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    result = gpu_check.main(["--tiny", "--models", "cnn,fastnet"])
    assert [r["model"] for r in result["rows"]] == ["cnn", "fastnet"]
    for row in result["rows"]:
        for engine in ("sequential", "ensemble"):
            assert row[engine]["models_per_minute"] > 0, row
        assert row["audit_hours"] > 0
    assert result["launcher"]["returncode"] == 0 and result["launcher"]["jobs_done"] == 2, result["launcher"]
