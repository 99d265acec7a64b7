import numpy as np
import pytest
from sklearn.metrics import f1_score, matthews_corrcoef

from tasks import taskpool


def test_metrics_from_summed_counts_equal_sklearn_on_the_raw_labels():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    shards = [slice(0, 130), slice(130, 131), slice(131, 500)]
    matrices = []
    for part in shards:
        counts = np.zeros((3, 3), dtype=int)
        np.add.at(counts, (truth[part], predicted[part]), 1)
        matrices.append(counts.tolist())
    scores = taskpool.metrics(taskpool.add_confusions(matrices))
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
    assert scores["mcc"] == pytest.approx(matthews_corrcoef(truth, predicted), abs=1e-12)
    assert scores["n"] == 500


@pytest.mark.parametrize("n, batch", [(10, 3), (64, 64), (65, 8), (1, 4)])
def test_shards_cover_every_example_once_on_batch_boundaries(n, batch):
    for shards in (1, 2, 3, 7):
        ranges = [taskpool.shard_range(n, batch, shards, s) for s in range(shards)]
        covered = [i for r in ranges for i in r]
        assert covered == list(range(n))
        assert all(r.start % batch == 0 for r in ranges if len(r))


def test_unknown_label_names_are_reported(tmp_path):
    with pytest.raises(taskpool.DataError, match="happy"):
        taskpool.encode_labels(["negative", "happy"], {"negative": 0, "positive": 1}, 2, "x.csv")
