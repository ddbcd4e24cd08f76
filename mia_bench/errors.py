"""Errors a user can act on, importable without torch (the command line names them before it loads torch)."""

from __future__ import annotations


class DatasetUnavailableError(RuntimeError):
    """Raised when a dataset is not on disk and cannot be downloaded (e.g. no network).

    The message names the dataset, the directory that was searched, the files expected there, and how to
    obtain them, so the user never has to read a stack trace.
    """
