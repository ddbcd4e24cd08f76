"""Population / test / public splits, membership masks and the seed of each model.

Everything here is a pure function of the seed, so a run can be reproduced from its config, and the masks are
saved with the run so attacks can be re-evaluated later without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mia_bench.data.base import ArrayData, RawDataset


@dataclass
class Splits:
    """The three disjoint record sets a cell uses.

    ``population``: the records membership is defined over (model k trains on ``population[masks[k]]``).
    ``test``: utility only, never scored by an attack. ``public``: held out of both, for defenses that need
    clean data the attacker never scores (Mixup Inference's pool, adversarial regularisation's reference set).
    """

    population: ArrayData
    test: ArrayData
    public: ArrayData | None
    num_classes: int
    input_shape: tuple[int, ...]
    name: str


def _resolve_size(size: int | float | None, total: int, what: str, default: int | None = None) -> int:
    if size is None:
        if default is None:
            return total
        return default
    if isinstance(size, float) and 0 < size < 1:
        return int(round(size * total))
    if isinstance(size, float) and not float(size).is_integer():
        raise ValueError(f"{what}={size!r}: expected an int count or a fraction in (0, 1)")
    size = int(size)
    if size < 0 or size > total:
        raise ValueError(f"{what}={size} is impossible: only {total} records are available (0..{total})")
    return size


def make_splits(
    raw: RawDataset,
    *,
    population_size: int | float | None = None,
    test_size: int | float | None = None,
    public_size: int | float = 0,
    seed: int = 0,
) -> Splits:
    """Carve population, test and public splits out of a loaded dataset, seeded.

    Without an official test split, ``test_size`` records (default 20%) are drawn from the train split
    first; the public split is drawn next; the population is (a subsample of) what remains.
    """
    gen = torch.Generator().manual_seed(int(seed))
    train = raw.train
    if raw.test is None:
        n_test = _resolve_size(
            test_size, len(train), "dataset.test_size", default=int(round(0.2 * len(train)))
        )
        if n_test <= 0 or n_test >= len(train):
            raise ValueError(
                f"dataset.test_size={test_size!r} leaves no test or no train records ({len(train)} total)"
            )
        perm = torch.randperm(len(train), generator=gen)
        test = train.subset(perm[:n_test])
        train = train.subset(perm[n_test:].sort().values)
    else:
        test = raw.test
        if test_size is not None:
            n_test = _resolve_size(test_size, len(test), "dataset.test_size")
            test = test.subset(torch.randperm(len(test), generator=gen)[:n_test])

    perm = torch.randperm(len(train), generator=gen)
    n_public = _resolve_size(public_size, len(train), "dataset.public_size")
    public = train.subset(perm[:n_public]) if n_public > 0 else None
    rest = perm[n_public:]
    n_pop = _resolve_size(population_size, len(rest), "dataset.population_size")
    if n_pop < 4:
        raise ValueError(f"population of {n_pop} records is too small to train and attack models")
    # Keep the population in its original order (sorted indices) so that record i means the same record
    # whatever the seed of the other splits.
    population = train.subset(rest[:n_pop].sort().values)
    return Splits(population, test, public, raw.num_classes, raw.input_shape, raw.name)


def make_masks(num_records: int, num_models: int, scheme: str = "paired", seed: int = 0) -> np.ndarray:
    """``masks[k, i]`` = record i is in model k's training set.

    ``paired`` (default): model 2j trains on a random half and model 2j+1 on the other half, so every record
    is IN for exactly half of the models and pairs can be appended later without touching existing ones
    (pair j draws from its own seeded stream). ``bernoulli``: every (model, record) independently IN with
    probability 0.5, as in the LiRA reference code.
    """
    if num_models < 2:
        raise ValueError(f"num_models={num_models}: membership inference needs at least 2 models")
    if scheme == "paired":
        if num_models % 2:
            raise ValueError(
                f"num_models={num_models}: the paired mask scheme needs an even number of models"
            )
        masks = np.zeros((num_models, num_records), dtype=bool)
        for j in range(num_models // 2):
            rng = np.random.default_rng([int(seed), j])
            half = rng.permutation(num_records)[: num_records // 2]
            masks[2 * j, half] = True
            masks[2 * j + 1] = ~masks[2 * j]
        return masks
    if scheme == "bernoulli":
        masks = np.stack(
            [np.random.default_rng([int(seed), k, 1]).random(num_records) < 0.5 for k in range(num_models)]
        )
        return masks
    raise ValueError(f"membership.scheme={scheme!r}: expected one of 'paired', 'bernoulli'")


def complementary_partner(masks: np.ndarray, model: int) -> int | None:
    """``model ^ 1`` when its mask is the complement of ``model``'s (the paired-halves scheme), else None: a pair
    whose masks reveal each other, which the attacks and the evaluator must keep apart."""
    partner = model ^ 1
    if partner < masks.shape[0] and np.array_equal(masks[model], ~masks[partner]):
        return partner
    return None


def model_seed(base_seed: int, k: int) -> int:
    """Seed of model k (initialisation, batch order, augmentation): depends only on the run seed and k, so adding
    models never changes existing ones."""
    return int(base_seed) * 100_003 + int(k)


def membership(
    population: ArrayData, num_models: int, scheme: str = "paired", seed: int = 0, null_test: bool = False
) -> tuple[ArrayData, ArrayData, np.ndarray, np.ndarray]:
    """``(records to train on, records to score, training masks, ground-truth masks of the scored records)``.

    Normally both are the population and both masks are the same. The null test (a validity check) trains on one
    half of the population and scores the other half, which no model saw, against random fake masks: every
    attack's AUC must then be about 0.5."""
    if not null_test:
        masks = make_masks(len(population), num_models, scheme, seed)
        return population, population, masks, masks
    perm = torch.randperm(len(population), generator=torch.Generator().manual_seed(int(seed) + 7919))
    half = len(population) // 2
    train_pool = population.subset(perm[:half].sort().values)
    audit = population.subset(perm[half:].sort().values)
    return (
        train_pool,
        audit,
        make_masks(len(train_pool), num_models, scheme, seed),
        make_masks(len(audit), num_models, scheme, seed + 1),
    )
