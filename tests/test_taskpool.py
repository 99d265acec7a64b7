import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import f1_score, matthews_corrcoef

from tasks import taskpool
from tasks.cli import main
from tests import tiny

LABEL2ID = {label: i for i, label in enumerate(tiny.LABELS)}
PAIR_HEADER = ("question", "passage", "label")


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


# -- sentence pairs ---------------------------------------------------------------------------------------


def _encode(source, tokenizer, **columns):
    settings = {"text_column": "question", "label_column": "label", "max_length": 24, **columns}
    return taskpool.encode(str(source), tokenizer=tokenizer, label2id=LABEL2ID, num_labels=len(LABEL2ID), **settings)


@pytest.fixture
def pairs(tmp_path):
    """Question-passage rows in a CSV; the last passage alone is longer than the 24 tokens `_encode` keeps."""
    rows = tiny.sentence_pairs("books", 12, seed=2)
    question, passage, label = rows[-1]
    rows[-1] = (question, " ".join([passage] * 10), label)
    return tiny.write_csv(tmp_path / "pairs.csv", rows, header=PAIR_HEADER), rows


def test_pairs_are_encoded_as_the_tokenizer_encodes_each_pair(pairs):
    path, rows = pairs
    tokenizer = tiny.tokenizer()
    data = _encode(path, tokenizer, text_pair_column="passage")
    for i, (question, passage, _) in enumerate(rows):
        expected = tokenizer(question, passage, truncation="longest_first", max_length=24)
        n = int(data["lengths"][i])
        assert data["input_ids"][i, :n].tolist() == expected["input_ids"]
        first = len(tokenizer(question)["input_ids"])  # [CLS] question [SEP]
        assert data["token_type_ids"][i, :n].tolist() == [0] * first + [1] * (n - first)
    # The long passage is cut to fit; its question stays whole, and some of the passage stays too.
    question_ids = tokenizer(rows[-1][0])["input_ids"]
    assert int(data["lengths"][-1]) == 24
    assert data["input_ids"][-1, : len(question_ids)].tolist() == question_ids
    assert int(data["token_type_ids"][-1].sum()) == 24 - len(question_ids) > 1


def test_a_missing_pair_column_names_the_column_and_the_source(pairs):
    path, _ = pairs
    with pytest.raises(taskpool.DataError, match=re.escape(f"{path}: missing column(s) ['context']")):
        _encode(path, tiny.tokenizer(), text_pair_column="context")


def test_single_texts_are_encoded_by_the_plain_tokenizer_call(tmp_path):
    rows = tiny.sentences("books", 40, seed=2)
    tokenizer = tiny.tokenizer()
    data = _encode(tiny.write_csv(tmp_path / "books.csv", rows), tokenizer, text_column="text", max_length=64)
    expected = tokenizer([text for text, _ in rows], truncation=True, max_length=64, padding="longest", return_tensors="pt")
    assert set(data) == {"input_ids", "attention_mask", "lengths", "labels", "source"}  # no segment ids
    assert torch.equal(data["input_ids"], expected["input_ids"].to(torch.int32))
    assert torch.equal(data["attention_mask"], expected["attention_mask"].to(torch.int8))


def test_scores_and_merge_statistics_read_the_pair_segments(pairs, tiny_population):
    from transformers import AutoModelForSequenceClassification

    from tasks.merge.statistics import fisher_diagonals

    path, rows = pairs
    tokenizer = tiny.tokenizer()
    data = _encode(path, tokenizer, text_pair_column="passage")
    without_segments = {name: tensor for name, tensor in data.items() if name != "token_type_ids"}
    model = AutoModelForSequenceClassification.from_pretrained(tiny_population["members"][0]).eval()
    with torch.no_grad():  # segment 1 swamps its tokens' embeddings: predictions hang on the segment ids
        model.bert.embeddings.token_type_embeddings.weight[1] *= 50
    # One batch of every row, padded as the tokenizer pads them: the very logits of the plain model call.
    score = {"batch_size": len(rows), "num_labels": len(LABEL2ID)}
    scored = taskpool.confusion(model, data, range(len(rows)), **score)
    with torch.no_grad():
        questions, passages = [question for question, _, _ in rows], [passage for _, passage, _ in rows]
        tokens = tokenizer(questions, passages, truncation="longest_first", max_length=24, padding="longest", return_tensors="pt")
        predicted = model(**tokens).logits.argmax(-1)
    expected = np.zeros((len(LABEL2ID), len(LABEL2ID)), dtype=int)
    np.add.at(expected, (data["labels"].numpy(), predicted.numpy()), 1)
    assert scored == expected.tolist()
    assert taskpool.confusion(model, without_segments, range(len(rows)), **score) != scored
    fisher = {"batches": 1, "batch_size": len(rows), "seed": 0}
    names = ["classifier.weight"]
    assert not torch.equal(fisher_diagonals(model, data, names, **fisher)[names[0]], fisher_diagonals(model, without_segments, names, **fisher)[names[0]])


def test_a_sentence_pair_run_scores_the_same_on_any_shard_count(tiny_config, tmp_path):
    from safetensors import safe_open

    folder = tmp_path / "pairs"
    dev = [tiny.write_csv(folder / f"{domain}_dev.csv", tiny.sentence_pairs(domain, 40, seed=2), header=PAIR_HEADER) for domain in tiny.DOMAIN_WORDS]
    test = {domain: tiny.write_csv(folder / f"{domain}_test.csv", tiny.sentence_pairs(domain, 40, seed=3), header=PAIR_HEADER) for domain in tiny.DOMAIN_WORDS}
    conf = yaml.safe_load(tiny_config.read_text())
    conf["data"] = {
        "dev": [str(p) for p in dev],
        "heldout": {domain: str(p) for domain, p in test.items()},
        "text_column": "question",
        "text_pair_column": "passage",
        "batch_size": 16,
    }
    conf.update(generations=1, merger="fisher")  # Fisher's statistics read the pairs too
    config = tmp_path / "pairs.yaml"
    config.write_text(yaml.safe_dump(conf))
    one = _run(config, tmp_path / "a", "--set", "shards=1")
    three = _run(config, tmp_path / "b", "--set", "shards=3")
    assert one["generations"] == three["generations"]
    assert one["fused_model_sha256"] == three["fused_model_sha256"]
    assert one["final"]["dev"] == three["final"]["dev"]
    store = Path(one["fused_model_uri"].removeprefix("file://")).parents[1]
    with safe_open(store / "data" / "dev.safetensors", "pt") as f:
        segments = f.get_tensor("token_type_ids")
    assert segments.any(dim=1).all()  # every dev row was encoded as a pair


def _run(config, out, *extra):
    assert main(["run", str(config), "--output", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())
