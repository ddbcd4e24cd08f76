import torch

from mia_bench.augment import apply_query, query_offsets, random_crop_flip
from mia_bench.training.loader import TensorBatchLoader


def test_random_crop_is_a_shift_of_each_record():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    out = random_crop_flip(x, padding=2, hflip=False)
    assert out.shape == x.shape
    # every output record equals its input shifted by some (dy, dx) in [-2, 2]^2 with zero fill
    import torch.nn.functional as F

    xp = F.pad(x, (2, 2, 2, 2))
    for i in range(64):
        hits = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(xp[i, :, dy : dy + 8, dx : dx + 8], out[i])
        ]
        assert hits, i
    assert not torch.equal(out, x)  # some records moved


def test_random_flip_mirrors_about_half():
    torch.manual_seed(0)
    x = torch.randn(400, 1, 4, 4)
    out = random_crop_flip(x, padding=0, hflip=True)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    same = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert torch.all(flipped | same)
    assert 150 < int(flipped.sum()) < 250


def test_tabular_is_untouched():
    x = torch.randn(10, 5)
    assert random_crop_flip(x, 4, True) is x


def test_queries():
    q = query_offsets(2, True)
    assert q[0] == (0, 0, False) and len(q) == 10 and len(set(q)) == 10
    assert query_offsets() == [(0, 0, False)]
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(apply_query(x, 0, 0, False), x)
    assert torch.equal(apply_query(x, 0, 0, True), x.flip(-1))
    down = apply_query(x, 1, 0, False)  # content moves down one row; row 0 is reflect-filled
    assert torch.equal(down[..., 1:, :], x[..., :-1, :])


def test_loader_covers_every_record_once_per_epoch():
    x, y = torch.arange(103.0)[:, None], torch.arange(103)
    loader = TensorBatchLoader(x, y, batch_size=10, seed=0)
    assert len(loader) == 11
    seen = torch.cat([yb for _, yb in loader])
    assert sorted(seen.tolist()) == list(range(103))
    first, second = torch.cat([yb for _, yb in loader]), torch.cat([yb for _, yb in loader])
    assert not torch.equal(first, second)  # reshuffled each epoch
    again = torch.cat([yb for _, yb in TensorBatchLoader(x, y, batch_size=10, seed=0)])
    assert torch.equal(seen, again)  # seeded
    assert len(TensorBatchLoader(x, y, batch_size=10, drop_last=True)) == 10
