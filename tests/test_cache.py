"""The model/signals cache: keys, atomic entries, corruption, resume, reuse across attacks and K, shards, CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import mia_bench.cache.keys as keys_mod
import mia_bench.pipeline as pipeline
from mia_bench.augment import query_offsets
from mia_bench.cache import EntryStore, data_fingerprint, describe_recipe
from mia_bench.cache.__main__ import main
from mia_bench.cache.models import ModelCache, open_cache
from mia_bench.data.base import ArrayData
from mia_bench.data.splits import make_masks, model_seed
from mia_bench.signals import Signals
from mia_bench.training.query import collect_logits
from mia_bench.training.train import Recipe, train_models
from tests.conftest import CONF, ROOT, TINY

DEFENSES = sorted(p.stem for p in (CONF / "defense").glob("*.yaml"))
# One model per Trainer.fit, so that counting fits counts models (tests/test_ensemble.py covers the ensemble path's
# cache interplay).
FAST = [*TINY, "attack=[loss]", "logger=none", "train.engine=sequential"]


@pytest.fixture
def fits(monkeypatch):
    """Counts ``Trainer.fit`` calls (the models actually trained); ``fits.fail_at = n`` raises on the n-th."""

    class Counter:
        n = 0
        fail_at: int | None = None

    counter = Counter()
    original = pl.Trainer.fit

    def fit(self, *args, **kwargs):
        counter.n += 1
        if counter.fail_at is not None and counter.n == counter.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    return counter


def _key(cfg, fingerprint="data", k=0, mask=None) -> str:
    mask = np.arange(10) % 2 == 0 if mask is None else mask
    cache = ModelCache(EntryStore("unused"), describe_recipe(cfg), fingerprint)
    return cache.model_key(k, model_seed(cfg.seed, k), mask)


def _open(cfg, **splits):
    """The run's cache as the pipeline opens it."""
    return open_cache(cfg.cache, describe_recipe(cfg), **splits)


def _train(cfg, splits, masks, indices=None, callbacks_for=None, cache=None):
    return train_models(Recipe.from_config(cfg), splits, masks, indices, callbacks_for, cache)


def _load(cfg):
    return pipeline.load_data(cfg.dataset, cfg.seed)


# ------------------------------------------------------------------------------------------------------ keys
CHANGES_A_MODEL = [
    "dataset.test_size=200",
    "dataset.train_augment.crop_padding=1",
    "model.hidden=[64]",
    "model=lenet",
    "train.epochs=7",
    "train.batch_size=32",
    "train.module.optimizer.lr=0.01",
    "defense=dropout",
    "defense=dpsgd",
    "seed=1",
    "trainer.precision=bf16-mixed",
    "+trainer.gradient_clip_val=1.0",
    "+callbacks.x={_target_:lightning.pytorch.callbacks.LearningRateMonitor}",
]
DOES_NOT = [
    "attack=loss",
    "evaluation.targets=1",
    "evaluation.n_bootstrap=5",
    "logger=none",
    "num_models=32",
    "signals.dtype=float16",
    "signals.batch_size=7",
    "cpu_threads=2",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "paths.output_dir=/elsewhere",
    "data.root=/elsewhere",
    "cache.dir=/elsewhere",
    "membership.seed=5",  # masks enter the key through their bytes
    "dataset.query_augment.shift=0",  # only the attacker's queries (no analysis recording during training)
]


def test_model_key_covers_what_determines_a_model_and_nothing_else(compose_cfg, monkeypatch):
    cfg = compose_cfg([])
    base = _key(cfg)

    def changed(override: str):  # a group choice needs composing; a value is merged (faster)
        key, value = override.lstrip("+").split("=", 1)
        if key in ("model", "defense", "attack", "logger"):
            return compose_cfg([override])
        out = cfg.copy()
        OmegaConf.set_struct(out, False)
        return OmegaConf.merge(out, OmegaConf.from_dotlist([f"{key}={value}"]))

    for override in CHANGES_A_MODEL:
        assert _key(changed(override)) != base, override
    for override in DOES_NOT:
        assert _key(changed(override)) == base, override
    mask = np.arange(10) % 2 == 0
    other = mask.copy()
    other[3] = not other[3]
    assert _key(cfg, mask=other) != base  # one record in or out
    assert _key(cfg, k=1) != base  # index (and with it the model's seed)
    assert _key(cfg, fingerprint="edited data") != base
    # Mixup Inference: its draws and mixing weights choose the outputs, its pass size only how they are computed.
    mi = compose_cfg(["defense=mixup_inference"])
    mi_key = _key(mi)
    assert mi_key != base
    for override, same in (("defense.predict.chunk_size=64", True), ("defense.predict.n_samples=7", False),
                           ("defense.predict.lam_pl=0.3", False)):  # fmt: skip
        edited = OmegaConf.merge(mi, OmegaConf.from_dotlist([override]))
        assert (_key(edited) == mi_key) == same, override
    import mia_bench.cache.models as models_mod

    monkeypatch.setattr(models_mod, "__version__", "9.9.9")
    assert _key(cfg) != base  # package version


@pytest.fixture
def package(tmp_path):
    """A copy of the package's source to edit (the digest reads it through its ``root`` argument)."""
    root = tmp_path / "src" / "mia_bench"
    shutil.copytree(ROOT / "mia_bench", root, ignore=shutil.ignore_patterns("__pycache__", "conf", "*.pyc"))
    return root


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))


def _docstring_of(path) -> str:
    """The first non-blank line of the module's own docstring (to edit it)."""
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    lines = [line for line in doc.splitlines() if line.strip()]
    assert lines, f"{path} has no docstring"
    return lines[0]


def _bump_first_number(path) -> None:
    """Change the first numeric literal inside a function of the module (a computation's constant) by one."""
    import ast

    text = path.read_text()
    tree = ast.parse(text)
    node = next(n for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
                if isinstance(n, ast.Constant) and type(n.value) in (int, float))
    lines = text.splitlines(keepends=True)
    line = lines[node.lineno - 1]
    lines[node.lineno - 1] = line[: node.col_offset] + repr(node.value + 1) + line[node.end_col_offset :]
    path.write_text("".join(lines))


def test_code_digest_covers_the_modules_the_recipe_uses_without_comments_or_docstrings(compose_cfg, package):
    """A comment or docstring edit, an edit of a module the recipe does not use, or a new unrelated module keeps the
    code digest (and every cached model); a changed computation in a module the model uses changes it."""
    recipe = describe_recipe(compose_cfg([]))
    used = keys_mod.code_modules(recipe, package)
    assert set(keys_mod.CORE_MODULES) <= set(used)
    assert "mia_bench.models.mlp" in used  # the model's own module, not the whole zoo
    assert not [m for m in used if m.startswith(("mia_bench.attacks", "mia_bench.cache", "mia_bench.report",
                                                 "mia_bench.defenses", "mia_bench.dynamics"))], used
    assert "mia_bench.models.vgg" not in used and "mia_bench.pipeline" not in used

    def digest():
        return keys_mod.code_digest(recipe, package)

    base = digest()
    assert base == keys_mod.code_digest(recipe)  # the copy is the installed source
    module = package / "training" / "module.py"
    first = _docstring_of(module)
    _edit(module, first, first + " Reworded, and a sentence added.")  # the module's docstring
    _edit(package / "augment.py", "\nimport ", "\n# a new comment line\n\n\nimport ")  # comments, blank lines
    assert digest() == base
    (package / "augment.py").write_text((package / "augment.py").read_text() + '\n\ndef _f(x):\n    """Doc."""\n'
                                        "    return x + 1  # a helper\n")
    with_helper = digest()
    assert with_helper != base  # new code in a used module
    _edit(package / "augment.py", '"""Doc."""', '"""Another docstring, same computation."""')
    assert digest() == with_helper
    _edit(package / "augment.py", "return x + 1  # a helper", "return x + 2  # a helper")
    assert digest() != with_helper  # a constant of a computation
    _edit(package / "augment.py", "return x + 2  # a helper", "return x + 1  # a helper")
    assert digest() == with_helper
    mlp = package / "models" / "mlp.py"  # a constant the model's own code already has (found, not assumed)
    before = mlp.read_text()
    _bump_first_number(mlp)
    assert digest() != with_helper
    mlp.write_text(before)

    # Modules the recipe does not use: an attack, a defense not selected, another model, the cache, a new module.
    for rel in ("attacks/lira.py", "defenses/dpsgd.py", "defenses/mixup_inference.py", "models/vgg.py",
                "cache/keys.py", "report/aggregate.py", "dynamics/recorder.py"):
        (package / rel).write_text((package / rel).read_text() + "\nCHANGED = 1\n")
    (package / "defenses" / "brand_new.py").write_text("import torch\n\nSCALE = 3.0\n")
    (package / "brand_new_helper.py").write_text("VALUE = 1\n")
    assert digest() == with_helper
    # ... until a used module imports one (inside a function too): then its code is covered.
    (package / "augment.py").write_text((package / "augment.py").read_text()
                                        + "\n\ndef _g():\n    from mia_bench import brand_new_helper\n\n"
                                        "    return brand_new_helper.VALUE\n")
    importing = digest()
    assert importing != with_helper
    (package / "brand_new_helper.py").write_text("VALUE = 2\n")
    assert digest() != importing


def test_code_digest_follows_the_selected_defense_model_and_analysis(compose_cfg, package):
    """A defense's, a model's or an analysis's code is in the digest of the recipes that select it only."""
    recipes = {name: describe_recipe(compose_cfg(overrides), recorded) for name, overrides, recorded in (
        ("none", [], None), ("dpsgd", ["defense=dpsgd"], None), ("mi", ["defense=mixup_inference"], None),
        ("pruning", ["defense=mia_pruning"], None), ("lenet", ["model=lenet"], None),
        ("dynamics", ["+analysis=dynamics"], {"dynamics": {"record_epochs": [1]}}))}

    def digests():
        return {name: keys_mod.code_digest(r, package) for name, r in recipes.items()}

    base = digests()
    assert len(set(base.values())) == len(base)  # each recipe its own code
    for rel, changes in (("defenses/dpsgd.py", {"dpsgd"}), ("defenses/mixup_inference.py", {"mi"}),
                         ("defenses/pruning.py", {"pruning"}), ("models/lenet.py", {"lenet"}),
                         ("dynamics/recorder.py", {"dynamics"}), ("training/module.py", set(recipes))):
        (package / rel).write_text((package / rel).read_text() + "\nCHANGED = 1\n")
        now = digests()
        assert {name for name in now if now[name] != base[name]} == changes, rel
        base = now


def test_code_digest_of_a_registered_model_name_covers_the_module_registering_it(package):
    """A recipe that builds a model by its registry name hashes the module registering that name, not the zoo; a
    name registered nowhere in the package covers every model module."""
    recipe = {"model": {"_target_": "mia_bench.models.create_model", "name": "lenet"}}
    used = keys_mod.code_modules(recipe, package)
    assert "mia_bench.models.lenet" in used and "mia_bench.models.registry" in used
    assert "mia_bench.models.vgg" not in used and "mia_bench.models.mlp" not in used
    unknown = keys_mod.code_modules({"model": {"_target_": "mia_bench.models.create_model", "name": "mine"}}, package)
    assert {"mia_bench.models.lenet", "mia_bench.models.vgg", "mia_bench.models.mlp"} <= set(unknown)


def test_code_digest_is_fast_once_the_modules_are_parsed(compose_cfg):
    recipe = describe_recipe(compose_cfg(["defense=mixup_inference"]))
    keys_mod.code_digest(recipe)
    start = time.perf_counter()
    for _ in range(10):
        keys_mod.code_digest(recipe)
    assert (time.perf_counter() - start) / 10 < 0.05  # about a millisecond on 2 shared cores


def test_data_fingerprint_sees_one_changed_value_and_ignores_identity():
    x, y = torch.randn(20, 3), torch.arange(20) % 2
    a = ArrayData(x, y)
    fp = data_fingerprint(population=a, public=None)
    assert fp == data_fingerprint(population=ArrayData(x.clone(), y.clone()), public=None)
    x2 = x.clone()
    x2[7, 1] += 1e-6
    assert data_fingerprint(population=ArrayData(x2, y), public=None) != fp
    y2 = y.clone()
    y2[0] = 1 - y2[0]
    assert data_fingerprint(population=ArrayData(x, y2), public=None) != fp
    assert data_fingerprint(population=a, public=a) != fp  # a split present vs absent


def test_signals_key_covers_models_queries_dtype_and_audit():
    rc = ModelCache(EntryStore("unused"), {}, "data")
    audit = ArrayData(torch.randn(6, 2), torch.arange(6) % 2)
    masks = np.eye(2, 6, dtype=bool)
    q = query_offsets()
    base = rc.signals_key(["a", "b"], audit, masks, q, np.float32)
    assert rc.signals_key(["a", "b", "c"], audit, masks, q, np.float32) != base
    assert rc.signals_key(["b", "a"], audit, masks, q, np.float32) != base
    assert rc.signals_key(["a", "b"], audit, masks, query_offsets(1), np.float32) != base
    assert rc.signals_key(["a", "b"], audit, masks, q, np.float16) != base
    assert rc.signals_key(["a", "b"], audit, ~masks, q, np.float32) != base
    assert rc.signals_key(["a", "b"], audit.subset(torch.arange(5)), masks[:, :5], q, np.float32) != base


# ----------------------------------------------------------------------------------------------- entries
def _put(store: EntryStore, key: str, payload: bytes = b"weights", kind: str = "models") -> bool:
    return store.put(kind, key, {"a.bin": lambda f: f.write(payload)}, f"entry {key}", {"x": 1})


def test_entries_are_verified_and_a_corrupt_or_partial_one_is_removed_with_a_warning(tmp_path, caplog):
    store = EntryStore(tmp_path / "c")
    assert store.get("models", "k1") is None
    assert _put(store, "k1") and _put(store, "k2") and _put(store, "k3")
    entry = store.get("models", "k1")
    assert entry.meta == {"x": 1} and entry.file("a.bin").read_bytes() == b"weights"
    assert not [p for p in (tmp_path / "c" / "models").iterdir() if p.name.startswith(".tmp-")]

    (tmp_path / "c/models/k1/a.bin").write_bytes(b"weightz")  # same size, different bytes
    (tmp_path / "c/models/k2/a.bin").write_bytes(b"weig")  # truncated
    (tmp_path / "c/models/k3/manifest.json").unlink()  # partial
    with caplog.at_level(logging.WARNING, logger="mia_bench.cache"):
        for key in ("k1", "k2", "k3"):
            assert store.get("models", key) is None
    for key, reason in (("k1", "checksum"), ("k2", "bytes"), ("k3", "manifest")):
        assert any(str(tmp_path / "c/models" / key) in r.message and reason in r.message for r in caplog.records)
        assert not (tmp_path / "c/models" / key).exists()


def test_a_second_writer_of_the_same_entry_keeps_the_first_and_leaves_no_temporary(tmp_path):
    store = EntryStore(tmp_path)
    assert _put(store, "k", b"first")
    assert _put(store, "k", b"second")
    assert store.get("models", "k").file("a.bin").read_bytes() == b"first"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["k"]


def test_an_interrupted_write_leaves_nothing_readable(tmp_path):
    store = EntryStore(tmp_path)

    def boom(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put("models", "k", {"a.bin": boom}, "x")
    assert store.get("models", "k") is None
    assert list((tmp_path / "models").iterdir()) == []


def test_an_unwritable_cache_is_a_warning_not_a_failure(tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        assert not _put(EntryStore(tmp_path / "file"), "k")
    assert "cannot write cache entry" in caplog.text


# ------------------------------------------------------------------------------- models: every defense
def _small(compose_cfg, *extra):
    return compose_cfg(
        [
            "dataset.population_size=300",
            "train.epochs=4",
            "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu",
            "logger=none",
            "train.engine=sequential",
            *extra,
        ]
    )


@pytest.mark.parametrize("defense", DEFENSES)
def test_a_cached_model_predicts_exactly_as_the_trained_one_for_every_defense(compose_cfg, tmp_path, fits, defense):
    # DP-SGD: a fixed noise and the RDP accountant (the PRV noise search takes seconds; the cache is what is tested).
    dp = ["train.module.noise_multiplier=1.0", "train.module.target_epsilon=null", "train.module.accountant=rdp"]
    cfg = _small(compose_cfg, f"defense={defense}", *(dp if defense == "dpsgd" else []))
    _, splits = _load(cfg)
    masks = make_masks(len(splits.population), 2, "paired", 0)
    rc = _open(cfg, population=splits.population, test=splits.test, public=splits.public)
    [fresh] = _train(cfg, splits, masks, [1], cache=rc)
    assert fits.n == 1 and not fresh.from_cache
    [cached] = _train(cfg, splits, masks, [1], cache=rc)
    assert fits.n == 1 and cached.from_cache and cached.key == fresh.key
    assert type(cached.module) is type(fresh.module)
    assert cached.module.defense_info == fresh.module.defense_info
    fresh_state, cached_state = fresh.module.state_dict(), cached.module.state_dict()
    assert fresh_state.keys() == cached_state.keys()
    assert all(torch.equal(fresh_state[k], cached_state[k]) for k in fresh_state)
    x = splits.population.x[:64]
    queries = query_offsets(1)
    # The attacker's view (predict path, inference-time defense included, its own seeded draws) and the plain model.
    assert np.array_equal(collect_logits(fresh.module.predict_logits, x, queries),
                          collect_logits(cached.module.predict_logits, x, queries))
    assert torch.equal(fresh.module.clean_logits(x), cached.module.clean_logits(x))
    assert cached.module.public_data is splits.public and cached.module.train_data is None


def test_artifacts_recorded_during_training_come_back_from_the_cache(compose_cfg, tmp_path, fits):
    class Record(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            module.artifacts.setdefault("epochs", np.zeros(0, dtype=np.int16))
            module.artifacts["epochs"] = np.append(module.artifacts["epochs"], trainer.current_epoch)
            module.artifacts["snap"] = np.full((3, 2), trainer.current_epoch, dtype=np.float16)

    cfg = _small(compose_cfg)
    _, splits = _load(cfg)
    masks = make_masks(len(splits.population), 2, "paired", 0)
    rc = _open(cfg, population=splits.population)
    [fresh] = _train(cfg, splits, masks, [0], lambda k: [Record()], cache=rc)
    [cached] = _train(cfg, splits, masks, [0], lambda k: [Record()], cache=rc)
    assert fits.n == 1 and cached.from_cache
    assert cached.module.artifacts.keys() == {"epochs", "snap"}
    for name, arr in fresh.module.artifacts.items():
        assert np.array_equal(cached.module.artifacts[name], arr) and cached.module.artifacts[name].dtype == arr.dtype
    assert list(cached.module.artifacts["epochs"]) == [0, 1, 2, 3]


def test_a_corrupt_model_is_retrained_with_a_warning(compose_cfg, tmp_path, fits, caplog):
    cfg = _small(compose_cfg, "train.epochs=1")
    _, splits = _load(cfg)
    masks = make_masks(len(splits.population), 2, "paired", 0)
    rc = _open(cfg, population=splits.population)
    first = _train(cfg, splits, masks, cache=rc)
    weights = rc.store.path("models", first[0].key) / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING):
        again = _train(cfg, splits, masks, cache=rc)
    assert fits.n == 3 and [m.from_cache for m in again] == [False, True]
    assert str(weights.parent) in caplog.text and "removed it; rebuilding" in caplog.text
    assert rc.store.get("models", first[0].key) is not None  # rebuilt
    assert torch.equal(again[0].module.clean_logits(splits.test.x), first[0].module.clean_logits(splits.test.x))


def test_a_model_another_job_is_building_is_skipped_and_taken_last(compose_cfg, tmp_path, fits):
    """Parallel jobs sharing the cache split the work: a model whose lock another job holds is deferred."""
    cfg = _small(compose_cfg, "train.epochs=1")
    _, splits = _load(cfg)
    masks = make_masks(len(splits.population), 4, "paired", 0)
    rc = _open(cfg, population=splits.population)
    key0 = rc.model_key(0, model_seed(cfg.seed, 0), masks[0])
    order, result = [], {}

    def job():
        result["models"] = _train(cfg, splits, masks, [0, 1], lambda k: order.append(k) or [], rc)

    with rc.store.lock("models", key0, blocking=False) as held:  # another job is building model 0
        assert held
        thread = threading.Thread(target=job)
        thread.start()
        deadline = time.time() + 60
        while not order and time.time() < deadline:
            time.sleep(0.02)
        thread.join(timeout=0.5)  # model 1 done; model 0 waits for the lock
        assert order == [1] and thread.is_alive()
    thread.join(timeout=60)
    assert order == [1, 0] and fits.n == 2
    assert [m.index for m in result["models"]] == [0, 1]


# --------------------------------------------------------------------------------------- the pipeline
def test_resume_after_an_interruption_trains_only_the_unfinished_models(compose_cfg, tmp_path, fits, caplog):
    cfg = compose_cfg(FAST, output_dir=tmp_path / "run1")
    fits.fail_at = 3  # killed while training model 2
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg)
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 2  # models 0, 1 were stored as they finished
    fits.n, fits.fail_at = 0, None
    with caplog.at_level(logging.INFO, logger="mia_bench"):
        records = pipeline.run(compose_cfg(FAST, output_dir=tmp_path / "run2"))
    assert fits.n == 2 and records[0]["models_from_cache"] == 2
    assert "models: 2 from the cache, 2 trained" in caplog.text
    # Resumed = uninterrupted: the same signals as a run without the cache (which writes nothing to it).
    fits.n = 0
    pipeline.run(compose_cfg([*FAST, "cache.enabled=false", "cache.dir=" + str(tmp_path / "off")], tmp_path / "run3"))
    assert fits.n == 4 and not (tmp_path / "off").exists()
    resumed, clean = Signals.load(tmp_path / "run2/signals.npz"), Signals.load(tmp_path / "run3/signals.npz")
    assert np.array_equal(resumed.logits, clean.logits)


def test_changing_only_the_attack_neither_trains_nor_queries_and_more_models_train_only_the_new(
    compose_cfg, tmp_path, fits, monkeypatch
):
    first = pipeline.run(compose_cfg(FAST, tmp_path / "a"))
    assert fits.n == 4
    queried = []
    monkeypatch.setattr(pipeline, "collect_logits", lambda *a, **k: queried.append(1) or collect_logits(*a, **k))
    t0 = time.perf_counter()
    second = pipeline.run(compose_cfg([*FAST, "attack=[rmia,lira_offline]"], tmp_path / "b"))
    assert fits.n == 4 and not queried and time.perf_counter() - t0 < 10
    assert {r["attack"] for r in second} == {"rmia", "lira_offline"} and second[0]["models_from_cache"] == 4
    for key in ("test_acc_mean", "train_acc_mean", "gen_gap"):
        assert second[0][key] == first[0][key]
    a, b = Signals.load(tmp_path / "a/signals.npz"), Signals.load(tmp_path / "b/signals.npz")
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.masks, b.masks)
    # K=4 -> K=6: masks are prefix-stable, so only models 4 and 5 are new.
    queried.clear()
    third = pipeline.run(compose_cfg([*FAST, "num_models=6"], tmp_path / "c"))
    assert fits.n == 6 and third[0]["models_from_cache"] == 4 and len(queried) > 0
    c = Signals.load(tmp_path / "c/signals.npz")
    assert np.array_equal(c.logits[:4], a.logits)



@pytest.mark.parametrize("damage", ["nan_logits", "wrong_shape", "missing_array"])
def test_a_signals_entry_with_valid_checksums_but_unusable_contents_is_replaced(
    compose_cfg, tmp_path, fits, caplog, damage
):
    """Checksums vouch for the files, not for contents that fit the run: such an entry is invalidated with the
    reason and recomputed (the rerun's metrics equal the first run's), not a failure on every rerun."""
    first = pipeline.run(compose_cfg(FAST, tmp_path / "a"))
    (entry,) = (tmp_path / "cache" / "signals").iterdir()
    with np.load(entry / "signals.npz") as f:
        arrays = {name: f[name] for name in f.files}
    if damage == "nan_logits":
        arrays["logits"][0, 0, 0, 0] = np.nan
    elif damage == "wrong_shape":
        arrays["logits"] = arrays["logits"][:, :-1]
    else:
        del arrays["train_acc"]
    shutil.rmtree(entry)
    cache = ModelCache(EntryStore(tmp_path / "cache"), {}, "unused")
    assert cache.save_signals(entry.name, arrays)  # rewritten through the store: checksums are valid
    with caplog.at_level(logging.WARNING, logger="mia_bench"):
        second = pipeline.run(compose_cfg(FAST, tmp_path / "b"))
    assert "unusable contents" in caplog.text and str(entry) in caplog.text
    assert [r["auc_mean"] for r in second] == [r["auc_mean"] for r in first] and fits.n == 4  # models from the cache
    with np.load(entry / "signals.npz") as f:  # the replacement is whole again
        assert set(f.files) >= {"logits", "train_acc"} and np.isfinite(f["logits"]).all()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mia_bench"):
        pipeline.run(compose_cfg(FAST, tmp_path / "c"))
    assert "unusable" not in caplog.text


class _Payload:
    """A pickle that runs code when unpickled: it creates the file named by ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(("kind", "name"), [("models", "model.pt"), ("models", "artifacts.npz"),
                                            ("signals", "signals.npz")])  # fmt: skip
def test_a_crafted_cache_entry_with_valid_checksums_does_not_execute(compose_cfg, tmp_path, fits, caplog, kind, name):
    """Security: weights load with weights_only=True and arrays with allow_pickle=False, so a pickle planted in
    the cache (checksums recomputed, as an attacker with write access would) is refused, not run; the entry is
    rebuilt and the results are those of a clean cache. (Checksums only detect accidents: README, Cache.)"""
    first = pipeline.run(compose_cfg(FAST, tmp_path / "a"))
    entry = sorted((tmp_path / "cache" / kind).iterdir())[0]
    marker = tmp_path / "payload-ran"
    if name == "model.pt":
        torch.save({"weight": _Payload(str(marker))}, entry / name)
    else:
        np.savez(entry / name, logits=np.array([_Payload(str(marker))], dtype=object))
    manifest = json.loads((entry / "manifest.json").read_text())
    digest = hashlib.sha256((entry / name).read_bytes()).hexdigest()
    manifest["files"][name] = {"size": (entry / name).stat().st_size, "sha256": digest}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="mia_bench"):
        second = pipeline.run(compose_cfg(FAST, tmp_path / "b"))
    assert not marker.exists() and str(entry) in caplog.text
    assert fits.n == (5 if kind == "models" else 4)  # the planted model is retrained; signals are recomputed
    assert [r["auc_mean"] for r in second] == [r["auc_mean"] for r in first]

def test_shards_train_disjoint_models_into_the_cache_then_the_attack_stage_trains_none(compose_cfg, tmp_path, fits):
    for index, expected in ((0, [0, 2]), (1, [1, 3])):
        before = fits.n
        out = tmp_path / f"shard{index}"
        assert pipeline.run(compose_cfg([*FAST, "shard.count=2", f"shard.index={index}"], out)) == []
        marker = json.loads((out / "shard.json").read_text())
        assert marker["trained"] == expected and marker["shard"] == f"{index}/2" and fits.n - before == 2
        assert not (out / "metrics.json").exists() and not (out / "signals.npz").exists()
    records = pipeline.run(compose_cfg(FAST, tmp_path / "attack"))
    assert fits.n == 4 and records[0]["models_from_cache"] == 4 and (tmp_path / "attack/metrics.json").exists()


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["shard.count=2", "shard.index=2"], "shard.index=2"),
        (["shard.count=0"], "shard.count=0"),
        (["shard.count=2", "cache.enabled=false"], "cache.enabled=true"),
    ],
)
def test_bad_shard_settings_fail_before_training(compose_cfg, fits, overrides, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        pipeline.run(compose_cfg([*FAST, *overrides]))
    assert fits.n == 0


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_lists_and_prunes_with_dry_run_by_default(tmp_path, capsys):
    store = EntryStore(tmp_path)
    for key in ("aaa111", "bbb222", "ccc333"):
        _put(store, key)
    _put(store, "sig1", kind="signals")
    (tmp_path / "models" / ".tmp-zzz-1").mkdir()
    old = time.time() - 3 * 86400
    os.utime(tmp_path / "models/aaa111/manifest.json", (old, old))
    manifest = json.loads((tmp_path / "models/aaa111/manifest.json").read_text())
    manifest["created"] = old
    (tmp_path / "models/aaa111/manifest.json").write_text(json.dumps(manifest))
    os.utime(tmp_path / "models/aaa111/manifest.json", (old, old))

    assert main(["--dir", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in ("aaa111", "bbb222", "sig1", "entry ccc333", "temporary")) and "5 entries" in out

    def removed(*args):
        main(["--dir", str(tmp_path), "prune", *args])
        capsys.readouterr()
        return {p.name for kind in ("models", "signals") for p in (tmp_path / kind).iterdir()}

    everything = {"aaa111", "bbb222", "ccc333", ".tmp-zzz-1", "sig1"}
    assert removed("--older-than", "2d") == everything  # dry run
    assert removed("--older-than", "2d", "--yes") == everything - {"aaa111"}
    assert removed("--key", "bbb", "--yes") == everything - {"aaa111", "bbb222"}
    assert removed("--incomplete", "--yes") == {"ccc333", "sig1"}
    assert removed("--all", "--kind", "signals", "--yes") == {"ccc333"}
    assert removed("--all", "--yes") == set()
    with pytest.raises(SystemExit):
        main(["--dir", str(tmp_path), "prune"])  # nothing chosen is an error, not "remove everything"
    with pytest.raises(SystemExit):
        main(["--dir", str(tmp_path), "prune", "--older-than", "soon"])


def test_cli_module_runs_on_the_default_dir_from_the_environment(tmp_path):
    _put(EntryStore(tmp_path / "cache"), "k123")  # conftest points MIA_BENCH_CACHE at tmp_path/cache
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "mia_bench.cache", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "k123" in res.stdout and str(tmp_path / "cache") in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ensemble", "sequential"])
def test_a_cached_rerun_replays_every_models_training_curves_into_the_logger(compose_cfg, tmp_path, engine, caplog):
    """The cache keeps each model's curves: a rerun that trains nothing writes the same metrics.csv per model."""
    import logging

    from mia_bench.pipeline import run

    overrides = [*FAST, "attack=loss", "logger=csv", f"train.engine={engine}"]
    run(compose_cfg(overrides, tmp_path / "first"))
    with caplog.at_level(logging.INFO, logger="mia_bench.training.train"):
        second = run(compose_cfg(overrides, tmp_path / "second"))
    assert second[0]["models_from_cache"] == 4
    assert "training curves of 4 cached model(s) replayed into the csv logger" in caplog.text
    for k in range(4):
        first_csv = (tmp_path / "first" / "train_logs" / f"model_{k}" / "metrics.csv").read_text()
        again = (tmp_path / "second" / "train_logs" / f"model_{k}" / "metrics.csv").read_text()
        assert again == first_csv and "train/loss" in first_csv.splitlines()[0]
