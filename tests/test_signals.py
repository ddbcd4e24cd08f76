"""Derived signals against direct torch / high-precision computations; the signals file round trip."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mia_bench.signals import Signals, SignalsFileError, derive, make_synthetic_signals


def _random_signals(k=3, n=40, q=2, c=5, scale=3.0, dtype=np.float32, seed=0) -> Signals:
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(k, n, q, c)) * scale).astype(dtype)
    labels = rng.integers(0, c, size=n)
    masks = rng.random((k, n)) < 0.5
    return Signals(logits=logits, labels=labels, masks=masks)


def test_derived_match_torch():
    sig = _random_signals()
    z = torch.from_numpy(sig.logits.astype(np.float64))              # [K, N, Q, C]
    k, n, q, c = z.shape
    y = torch.from_numpy(sig.labels).view(1, n, 1).expand(k, n, q)
    log_p = torch.log_softmax(z, -1)
    p = log_p.exp()
    loss = F.cross_entropy(z.reshape(-1, c), y.reshape(-1), reduction="none").view(k, n, q)
    p_y = p.gather(-1, y[..., None])[..., 0]
    entropy = -(p * log_p).sum(-1)
    onehot = F.one_hot(y, c).bool()
    mentr = -(1 - p_y) * torch.log(p_y) - torch.where(onehot, 0.0, p * torch.log(1 - p)).sum(-1)
    phi = torch.log(p_y) - torch.log(1 - p_y)
    np.testing.assert_allclose(sig.loss, loss.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sig.true_log_prob, -loss.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sig.conf, p_y.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sig.entropy, entropy.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sig.mentr, mentr.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sig.phi, phi.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(sig.correct, (z.argmax(-1) == y).numpy())
    for name in ("loss", "conf", "entropy", "mentr", "phi", "true_log_prob"):
        assert getattr(sig, name).dtype == np.float64 and getattr(sig, name).shape == (k, n, q)
    assert sig.phi is sig.phi  # cached


def _mp_reference(z, y):
    """loss, entropy, mentr, phi of one logit vector with 60-digit arithmetic."""
    mpmath.mp.dps = 60
    zz = [mpmath.mpf(float(v)) for v in z]
    m = max(zz)
    lse = m + mpmath.log(sum(mpmath.exp(v - m) for v in zz))
    logp = [v - lse for v in zz]
    p = [mpmath.exp(v) for v in logp]
    others = [zz[j] for j in range(len(zz)) if j != y]
    mo = max(others)
    lse_others = mo + mpmath.log(sum(mpmath.exp(v - mo) for v in others))
    log1m = []
    for i in range(len(zz)):
        rest = [zz[j] for j in range(len(zz)) if j != i]
        mr = max(rest)
        log1m.append(mr + mpmath.log(sum(mpmath.exp(v - mr) for v in rest)) - lse)  # log(1 - p_i)
    entropy = -sum(p[i] * logp[i] for i in range(len(zz)))
    mentr = -mpmath.exp(log1m[y]) * logp[y] - sum(p[i] * log1m[i] for i in range(len(zz)) if i != y)
    return float(-logp[y]), float(entropy), float(mentr), float(zz[y] - lse_others)


def test_extreme_logits_are_finite_and_exact():
    rows = np.array([
        [1000.0, 0.0, -1000.0],     # true class saturated: p_y == 1 in float64
        [1000.0, 0.0, -1000.0],     # label 1: p_y = e^-1000
        [1000.0, 0.0, -1000.0],     # label 2
        [500.0, 500.0, -500.0],     # tie at the top
        [-1000.0, 1000.0, 999.0],   # true class hopeless, two close competitors
        [40.0, 0.0, 0.0],           # 1 - p_y ~ 4e-18: below float64 resolution around 1
        [0.0, 0.0, 0.0],
    ])
    labels = np.array([0, 1, 2, 0, 0, 0, 1])
    sig = Signals(logits=rows[None, :, None, :].astype(np.float32), labels=labels,
                  masks=np.zeros((1, len(rows)), bool))
    for i, (z, y) in enumerate(zip(rows, labels, strict=True)):
        loss, entropy, mentr, phi = _mp_reference(z, y)
        for name, ref in (("loss", loss), ("entropy", entropy), ("mentr", mentr), ("phi", phi)):
            got = getattr(sig, name)[0, i, 0]
            assert np.isfinite(got), (name, i)
            assert got == pytest.approx(ref, rel=1e-9, abs=1e-300), (name, i, got, ref)
    assert sig.phi[0, 0, 0] == pytest.approx(1000.0)
    assert sig.phi[0, 2, 0] == pytest.approx(-2000.0)


def test_float16_input_matches_float32_of_same_values():
    sig16 = _random_signals(dtype=np.float16, scale=20.0)
    sig32 = Signals(logits=sig16.logits.astype(np.float32), labels=sig16.labels, masks=sig16.masks)
    assert sig16.logits.dtype == np.float16
    for name in ("loss", "conf", "entropy", "mentr", "phi", "correct"):
        np.testing.assert_array_equal(getattr(sig16, name), getattr(sig32, name))


def test_chunking_does_not_change_results():
    sig = _random_signals(k=4, n=37, q=3, c=7)
    full = derive(sig.logits, sig.labels)
    tiny = derive(sig.logits, sig.labels, chunk_bytes=1)  # one (model, record) row per chunk
    for name, arr in full.items():
        np.testing.assert_array_equal(arr, tiny[name])


def test_validation_messages_name_the_bad_shape():
    sig = _random_signals()
    with pytest.raises(ValueError, match=r"\(3, 40, 2\)"):
        Signals(logits=sig.logits[..., 0], labels=sig.labels, masks=sig.masks)
    with pytest.raises(ValueError, match=r"\(39,\)"):
        Signals(logits=sig.logits, labels=sig.labels[:-1], masks=sig.masks)
    with pytest.raises(ValueError, match=r"\(2, 40\)"):
        Signals(logits=sig.logits, labels=sig.labels, masks=sig.masks[:2])
    with pytest.raises(ValueError, match="float16 or float32"):
        Signals(logits=sig.logits.astype(np.int32), labels=sig.labels, masks=sig.masks)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        Signals(logits=sig.logits, labels=sig.labels + 5, masks=sig.masks)
    bad = sig.logits.copy()
    bad[1, 2, 0, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*\(1, 2, 0, 3\)"):
        Signals(logits=bad, labels=sig.labels, masks=sig.masks)
    ok = Signals(logits=sig.logits, labels=sig.labels.astype(np.int32), masks=sig.masks.astype(np.uint8))
    assert ok.labels.dtype == np.int64 and ok.masks.dtype == bool


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_save_load_roundtrip(tmp_path, dtype):
    sig = make_synthetic_signals(4, 50, 3, 6, dtype=dtype)
    path = tmp_path / "sub" / "signals.npz"
    sig.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["signals.npz"]  # no temporary file left behind
    back = Signals.load(path)
    assert back.logits.dtype == dtype
    np.testing.assert_array_equal(back.logits, sig.logits)
    np.testing.assert_array_equal(back.labels, sig.labels)
    np.testing.assert_array_equal(back.masks, sig.masks)
    np.testing.assert_array_equal(back.phi, sig.phi)
    sig.save(path)  # overwriting works
    assert Signals.load(path).num_models == 4


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        Signals.load(missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(SignalsFileError, match="corrupt.npz"):
        Signals.load(corrupt)
    good = tmp_path / "good.npz"
    make_synthetic_signals(3, 20, 1, 4).save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SignalsFileError, match="truncated.npz"):
        Signals.load(truncated)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, logits=np.zeros((2, 5, 1, 3), np.float32), labels=np.zeros(5, np.int64),
             masks=np.zeros((2, 4), bool))
    with pytest.raises(SignalsFileError, match=r"wrong.npz.*\(2, 4\)"):
        Signals.load(wrong)
    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, logits=np.zeros((2, 5, 1, 3), np.float32))
    with pytest.raises(SignalsFileError, match=r"nokey.npz.*labels"):
        Signals.load(nokey)


def test_synthetic_signals_shapes_and_pairs():
    sig = make_synthetic_signals(6, 100, 2, 10)
    assert sig.logits.shape == (6, 100, 2, 10)
    np.testing.assert_array_equal(sig.masks[0], ~sig.masks[1])
    assert sig.masks.sum(0).tolist() == [3] * 100


def test_query_passes_by_device_change_how_not_what():
    """signals.batch_size=null queries in passes of 256 records on a CPU (4096 on a GPU); the outputs do not depend
    on the pass size."""
    from mia_bench.augment import query_offsets
    from mia_bench.training.query import collect_logits, query_batch_size

    assert query_batch_size(None, "cpu") == 256 and query_batch_size(None, torch.device("cuda")) == 4096
    assert query_batch_size(7, "cuda") == 7
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()  # fmt: skip
    sizes: list[int] = []

    def forward(x):
        sizes.append(len(x))
        return model(x)

    x = torch.rand(600, 1, 8, 8)
    queries = query_offsets(1)
    default = collect_logits(forward, x, queries)
    assert sizes == [256] * len(queries) * 2 + [88] * len(queries)
    for batch in (7, 1000):
        np.testing.assert_allclose(collect_logits(forward, x, queries, batch), default, atol=1e-6, rtol=0)
