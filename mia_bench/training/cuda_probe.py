"""Keep torch's "is CUDA available?" probe cheap on machines without a GPU.

Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` when it is imported, so that probing CUDA in a parent process
does not initialise it before worker processes fork. torch then answers every ``torch.cuda.is_available()`` by
trying to load NVML first, and on a machine without the driver that load fails and is retried on every call. Adam
and AdamW make that call at every step (their graph-capture health check), which cost 0.1 ms per step: 9-12% of
the default cell's one-model-at-a-time training on a CPU (measured side by side, 16.3 s against 17.9 s). Where no
GPU is available there is nothing for the probe to protect (torch then falls back to the CUDA runtime call anyway),
so the plain runtime probe is restored; where a GPU is available Lightning's setting is left as it is. Training
calls :func:`keep_cuda_probe_cheap` before it starts (once is enough: a later call changes nothing).
"""

from __future__ import annotations

import os

import torch

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def keep_cuda_probe_cheap() -> bool:
    """Restore torch's runtime CUDA probe when no GPU is available; True if it did."""
    if os.environ.get(NVML_CHECK) == "1" and not torch.cuda.is_available():
        os.environ[NVML_CHECK] = "0"
        return True
    return False
