"""The most exposed records: detection FPR by hand, ranking, and the files for tabular data."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from mia_bench.data.base import ArrayData
from mia_bench.report.exposed import detection_fpr, most_exposed, write_exposed


def test_detection_fpr_is_the_share_of_non_members_scoring_at_least_as_high():
    scores = np.array([[5.0, 1.0, 3.0, 2.0, 4.0, 0.0]])
    member = np.array([[True, True, False, False, False, True]])
    fpr = detection_fpr(scores, member)
    # non-members score 3, 2, 4: record 0 (5) beats all, record 1 (1) is beaten by all, record 5 (0) too
    np.testing.assert_array_equal(fpr[0, [0, 1, 5]], [0.0, 1.0, 1.0])
    assert np.isnan(fpr[0, [2, 3, 4]]).all()
    tied = detection_fpr(np.array([[3.0, 3.0, 1.0]]), np.array([[True, False, False]]))
    assert tied[0, 0] == 0.5  # a non-member with the same score is flagged with it


def test_most_exposed_ranks_by_mean_detection_fpr_and_writes_a_csv_for_tabular_data(tmp_path):
    rng = np.random.default_rng(0)
    member = np.stack([rng.permutation(200) < 100 for _ in range(3)])
    scores = rng.normal(size=(3, 200)) + 8.0 * member * (np.arange(200) < 10)   # records 0-9 leak when members
    result = SimpleNamespace(scores={"weak": rng.normal(size=(3, 200)), "strong": scores}, labels=member)
    records = [{"attack": "weak", "tpr_at_fpr_0.01_mean": 0.01}, {"attack": "strong", "tpr_at_fpr_0.01_mean": 0.2}]
    exposed = most_exposed(result, records)
    assert exposed["attack"] == "strong"
    top = exposed["record"][: int((member[:, :10].any(0)).sum())]
    assert set(top) == {i for i in range(10) if member[:, i].any()}
    assert np.all(np.diff(exposed["fpr"]) >= 0)
    audit = ArrayData(torch.zeros(200, 4), torch.arange(200) % 3)
    write_exposed(exposed, audit, tmp_path)
    rows = (tmp_path / "exposed_records.csv").read_text().splitlines()
    assert len(rows) == 101 and rows[1].split(",")[3] == "strong"
    assert not (tmp_path / "exposed_records.png").exists()  # tabular data: no image grid
