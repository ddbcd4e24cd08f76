"""The config tree as a package, so that ``hydra.initialize_config_module("mia_bench.conf")`` (or a search path
``pkg://mia_bench.conf``) finds it too; importing it registers the attack bundles ``all`` and ``fast``."""

import mia_bench.config  # noqa: F401  (registers the attack bundles in Hydra's ConfigStore)
