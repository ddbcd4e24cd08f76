"""mia_bench: how much does a trained model leak about its training records, and what does a defense cost?

The Python API (``mia_bench.score``, ``mia_bench.run``, ``mia_bench.load_run``; see ``mia_bench.api``) is imported
on first use, so ``python -m mia_bench`` and shell completion do not pay for torch before they need it.
"""

__version__ = "0.1.0"
__all__ = ["score", "run", "load_run", "RunResults", "audit", "AuditResult", "Signals", "build_attack",
           "export_lira", "import_lira", "export_privacy_meter", "import_privacy_meter", "__version__"]


def __dir__() -> list[str]:
    """The API's names too (they are imported on first use), so completion in IPython and editors finds them."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str):
    if name in ("score", "run", "load_run", "RunResults", "audit", "AuditResult"):
        from mia_bench import api

        return getattr(api, name)
    if name == "Signals":
        from mia_bench.signals import Signals

        return Signals
    if name in ("export_lira", "import_lira", "export_privacy_meter", "import_privacy_meter"):
        from mia_bench import interop

        return getattr(interop, name)
    if name == "build_attack":
        from mia_bench.config import build_attack

        return build_attack
    raise AttributeError(f"module 'mia_bench' has no attribute {name!r}")
