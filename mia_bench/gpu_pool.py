"""One GPU per job on a multi-GPU machine: every job of a parallel multirun leases a free GPU for its lifetime.

``hydra/launcher=gpus`` runs jobs in joblib (loky) worker processes and sets ``MIA_BENCH_GPU_POOL`` (a lock
directory) for each job; ``python -m mia_bench`` then wraps the job in :func:`lease_device` and trains on the
leased device (``trainer.devices=[i]`` and ``torch.cuda.set_device(i)``).

Why a lease and not ``CUDA_VISIBLE_DEVICES``: loky reuses worker processes, and a variable set after CUDA was
initialised in a worker has no effect, so a second job in that worker would silently land on the first job's
GPU. Why ``fcntl.flock``: the kernel drops the lock when the holder exits or crashes, so a killed job never
leaves a stale lease behind (a PID file would), and one lock directory shared by several sweeps on the machine
keeps them off each other's GPUs too. Lock files are named by the physical GPU id (from
``CUDA_VISIBLE_DEVICES`` where set), so sweeps that see different subsets of GPUs still agree.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

ENV_LOCK_DIR = "MIA_BENCH_GPU_POOL"  # lock directory; set per job by conf/hydra/launcher/gpus.yaml
_last_leased: int | None = None  # the id this process held last: tried first, so a reused worker keeps one CUDA context


def device_names(n_devices: int, visible: str | None = None) -> list[str]:
    """Names of the lock files of logical devices 0..n-1: the physical ids (or UUIDs) listed in
    ``CUDA_VISIBLE_DEVICES`` when it is set, else ``0..n-1``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    names = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if len(names) < n_devices:
        names = [str(i) for i in range(n_devices)]
    return names[:n_devices]


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on ``path``, or None when another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    # Who holds it, for a user inspecting the lock directory (the lock itself is the flock, not this text).
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} host {os.uname().nodename} since {time.strftime('%H:%M:%S')}\n".encode())
    return fd


@contextlib.contextmanager
def lease_device(
    n_devices: int,
    lock_dir: str | Path,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    names: Sequence[str] | None = None,
    slots: int = 1,
) -> Iterator[int]:
    """Hold one of ``slots`` places on one of devices ``0..n_devices-1`` for the ``with`` block and yield the
    device's index (``slots`` > 1: that many jobs share a GPU, for small models that leave a large GPU idle).

    Takes a free place on the least loaded device (the one this process held last first among equals), waits
    (polling every ``poll_s``) while all are held, and releases on exit, also on an exception. ``timeout_s``
    (None = wait forever) raises ``TimeoutError``."""
    global _last_leased
    if n_devices < 1:
        raise ValueError(f"gpu pool n_devices={n_devices}: expected >= 1 (no CUDA device visible?)")
    if slots < 1:
        raise ValueError(f"jobs_per_gpu={slots}: expected >= 1")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else device_names(n_devices)
    order = list(range(n_devices))
    if _last_leased is not None and _last_leased < n_devices:
        order.remove(_last_leased)
        order.insert(0, _last_leased)
    # Slot 0 of every device before slot 1 of any: jobs spread over the GPUs before they share one.
    places = [(i, slot) for slot in range(slots) for i in order]
    start, warned = time.monotonic(), False
    while True:
        for i, slot in places:
            fd = _try_lock(lock_dir / (f"gpu{names[i]}.lock" if slot == 0 else f"gpu{names[i]}.{slot}.lock"))
            if fd is not None:
                break
        else:
            waited = time.monotonic() - start
            if timeout_s is not None and waited >= timeout_s:
                raise TimeoutError(f"no free GPU among {n_devices} x {slots} in {lock_dir} after {waited:.0f}s")
            if not warned:
                log.info("all %d GPU places leased (locks in %s): waiting for one to free up", len(places), lock_dir)
                warned = True
            time.sleep(poll_s)
            continue
        break
    _last_leased = i
    log.info("leased GPU %d (%s, place %d of %d) from %s", i, names[i], slot + 1, slots, lock_dir)
    try:
        yield i
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def gpu_count() -> int:
    """Visible CUDA devices, at least 1 (the joblib worker count of ``hydra/launcher=gpus``). Counted by NVML
    through torch without initialising CUDA, so forked or spawned workers can still use every device."""
    import torch

    return max(1, torch.cuda.device_count())


def jobs_per_gpu(value=1) -> int:
    """The ``jobs_per_gpu`` setting of ``hydra/launcher=gpus`` as a positive int (1 when unset)."""
    try:
        n = int(1 if value in (None, "") else value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"jobs_per_gpu={value!r}: expected a positive number of jobs sharing one GPU")
    return n


@contextlib.contextmanager
def job_device(trainer, per_gpu=1) -> Iterator[int | None]:
    """For ``python -m mia_bench``: when ``MIA_BENCH_GPU_POOL`` is set (``hydra/launcher=gpus``) and CUDA devices
    are visible, lease one (one of ``per_gpu`` places on it) for the job and point the ``trainer`` config node at it;
    otherwise do nothing."""
    lock_dir = os.environ.get(ENV_LOCK_DIR)
    if not lock_dir:
        yield None
        return
    import torch  # device_count() asks NVML and does not initialise CUDA in this process

    n = torch.cuda.device_count()
    if n == 0 or str(trainer.get("accelerator", "auto")) == "cpu":
        log.warning("hydra/launcher=gpus but no CUDA device in use: running without a GPU lease")
        yield None
        return
    with lease_device(n, lock_dir, slots=jobs_per_gpu(per_gpu)) as i:
        trainer.devices = [i]  # Lightning's devices=1 means cuda:0 whatever the current device is
        torch.cuda.set_device(i)  # everything outside Lightning that says "cuda" (signals, utility) uses it too
        yield i
