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


def test_token_budget_batches_fit_the_budget_and_shards_keep_them_whole():
    torch = pytest.importorskip("torch")
    lengths = torch.tensor(np.random.default_rng(1).integers(3, 60, 301))
    bounds = taskpool.batch_bounds(lengths, batch_size=16, batch_tokens=200)
    assert bounds[0] == 0 and bounds[-1] == 301 and bounds == sorted(set(bounds))
    for start, stop in zip(bounds[:-1], bounds[1:]):
        size, longest = stop - start, int(lengths[start:stop].max())
        assert size <= 16 and (size == 1 or size * longest <= 200)
        # greedy: the next example would not have fitted
        if stop < 301:
            assert size == 16 or (size + 1) * max(longest, int(lengths[stop])) > 200
    # an example longer than the budget still gets a batch of its own
    assert taskpool.batch_bounds(torch.tensor([5, 500, 5]), batch_size=8, batch_tokens=100) == [0, 1, 2, 3]
    for shards in (1, 2, 3, 7, 40):
        ranges = [taskpool.shard_range(301, 16, shards, s, lengths=lengths, batch_tokens=200) for s in range(shards)]
        assert [i for r in ranges for i in r] == list(range(301))
        for r in ranges:
            if len(r):
                assert r.start in bounds
                # cut from the shard's own start, its batches are the global ones
                assert taskpool.batch_bounds(lengths, 16, 200, r.start, r.stop) == [b for b in bounds if r.start <= b <= r.stop]


def test_unknown_label_names_are_reported(tmp_path):
    with pytest.raises(taskpool.DataError, match="happy"):
        taskpool.encode_labels(["negative", "happy"], {"negative": 0, "positive": 1}, 2, "x.csv")
