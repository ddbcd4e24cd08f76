import numpy as np
import pytest
import torch

from mia_bench.data.base import ArrayData, RawDataset
from mia_bench.data.splits import make_masks, make_splits


def _raw(n=200, with_test=False):
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    y = torch.arange(n) % 4
    test = ArrayData(-x[:50], y[:50]) if with_test else None
    return RawDataset("toy", ArrayData(x, y), test, num_classes=4)


def test_paired_masks_balance_and_complement():
    m = make_masks(101, 8, "paired", seed=3)
    assert m.shape == (8, 101) and m.dtype == bool
    for j in range(4):
        assert np.array_equal(m[2 * j], ~m[2 * j + 1])
    counts = m.sum(0)
    assert set(counts.tolist()) == {4}  # every record IN for exactly K/2 models
    assert abs(int(m[0].sum()) - 50) <= 1


def test_masks_extend_without_changing_existing_pairs():
    small, big = make_masks(300, 4, seed=1), make_masks(300, 10, seed=1)
    assert np.array_equal(small, big[:4])


def test_masks_seeded_and_distinct():
    assert np.array_equal(make_masks(50, 4, seed=0), make_masks(50, 4, seed=0))
    assert not np.array_equal(make_masks(50, 4, seed=0), make_masks(50, 4, seed=1))
    a = make_masks(50, 4, seed=0)
    assert not np.array_equal(a[0], a[2])


def test_bernoulli_masks():
    m = make_masks(4000, 6, "bernoulli", seed=0)
    assert 0.45 < m.mean() < 0.55
    assert not np.array_equal(m[0], ~m[1])


@pytest.mark.parametrize(
    "k,scheme,msg", [(1, "paired", "at least 2"), (5, "paired", "even"), (4, "halves", "halves")]
)
def test_mask_errors_name_the_value(k, scheme, msg):
    with pytest.raises(ValueError, match=msg):
        make_masks(10, k, scheme)


def test_splits_are_disjoint_and_seeded():
    raw = _raw()
    s = make_splits(raw, test_size=40, public_size=20, population_size=100, seed=0)
    ids = [set(part.x[:, 0].tolist()) for part in (s.population, s.test, s.public)]
    assert [len(i) for i in ids] == [100, 40, 20]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    s2 = make_splits(raw, test_size=40, public_size=20, population_size=100, seed=0)
    assert torch.equal(s.population.x, s2.population.x)
    # population keeps the original record order
    assert torch.all(s.population.x[1:, 0] > s.population.x[:-1, 0])


def test_official_test_split_kept():
    s = make_splits(_raw(with_test=True), seed=0)
    assert len(s.test) == 50 and len(s.population) == 200 and s.public is None


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"test_size": 500}, "test_size"),
        ({"public_size": 1000}, "public_size"),
        ({"population_size": 2.5}, "population_size"),
    ],
)
def test_split_errors_name_the_key(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_splits(_raw(), seed=0, **kw)
