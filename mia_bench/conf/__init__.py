"""The config tree as a package, so that ``hydra.initialize_config_module("mia_bench.conf")`` (or a search path
``pkg://mia_bench.conf``) finds it too. Hydra's own API then needs ``mia_bench.config.register()`` first (the
resolvers and the attack bundles ``all`` and ``fast``); ``mia_bench.config.compose`` calls it itself."""
