"""Regression and token classification (NER), single-task: their metrics against scipy and seqeval, their
shard statistics, and whole runs on tiny members of each kind."""

import json
import random

import numpy as np
import pytest
import torch
import yaml

from tasks import audit, taskpool
from tasks.cli import main
from tasks.config import ConfigError, EvolverConfig
from tasks.taskpool.tokens import bio_scheme, entities
from tests import tiny

TAG2ID = {tag: i for i, tag in enumerate(tiny.TAGS)}


def _config(population, tmp_path, **overrides):
    data = {"dev": [str(p) for p in population["dev"]], "heldout": {k: str(v) for k, v in population["test"].items()}, "batch_size": 8}
    conf = {
        "models": [str(m) for m in population["members"]],
        "data": {**data, **overrides.pop("data", {})},
        "generations": 2,
        "store": str(tmp_path / "store"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        **overrides,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _run(config, out, *extra):
    assert main(["run", str(config), "--output", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def _random_tags(rng: random.Random, n: int) -> list[str]:
    # Stray I- tags, type switches inside a span and spans at either end: what strict IOB2 must get right.
    return [rng.choice(tiny.TAGS) for _ in range(n)]


def test_entity_scores_equal_seqeval_strict_iob2():
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    rng = random.Random(0)
    gold = [_random_tags(rng, rng.randint(1, 12)) for _ in range(400)]
    guess = [[t if rng.random() < 0.7 else rng.choice(tiny.TAGS) for t in row] for row in gold]
    prefixes, types = bio_scheme(tiny.TAGS, "test")
    stats = {}
    for g, p in zip(gold, guess):
        true = entities([TAG2ID[t] for t in g], prefixes, types)
        found = entities([TAG2ID[t] for t in p], prefixes, types)
        for kind, role in [*((e[2], 0) for e in true & found), *((e[2], 1) for e in found - true), *((e[2], 2) for e in true - found)]:
            stats.setdefault(kind, [0, 0, 0])[role] += 1
    scores = taskpool.task("token_classification", TAG2ID).metrics({"entities": stats, "sentences": len(gold), "words": 1, "correct_words": 1})
    strict = {"mode": "strict", "scheme": IOB2}
    assert scores["entity_precision"] == pytest.approx(precision_score(gold, guess, **strict), abs=1e-12)
    assert scores["entity_recall"] == pytest.approx(recall_score(gold, guess, **strict), abs=1e-12)
    assert scores["entity_f1"] == pytest.approx(f1_score(gold, guess, **strict), abs=1e-12)
    assert 0.2 < scores["entity_f1"] < 0.9  # neither trivial nor perfect: the comparison means something


def _encoded_dev(population, kind):
    """The first member (loaded with its task's Auto class) and the population's dev sets, encoded for `kind`."""
    from transformers import AutoTokenizer

    from tasks.modelpool import auto_class

    folder = population["members"][0]
    columns = {"text_column": "tokens", "label_column": "tags"} if kind == "token_classification" else {"text_column": "text", "label_column": "score"}
    labels = {"label2id": TAG2ID, "num_labels": len(TAG2ID)} if kind == "token_classification" else {"label2id": {}, "num_labels": 1}
    data = taskpool.encode(
        [str(p) for p in population["dev"]], tokenizer=AutoTokenizer.from_pretrained(folder), max_length=64, task_type=kind, **columns, **labels
    )
    return auto_class(kind).from_pretrained(folder).eval(), data


def test_a_ner_model_scores_like_seqeval_on_its_own_word_predictions(tiny_ner):
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    model, data = _encoded_dev(tiny_ner, "token_classification")
    task = taskpool.task("token_classification", TAG2ID)
    [stats] = task.score(model, data, range(len(data["labels"])), batch_size=8, num_labels=len(TAG2ID))
    # seqeval on the same predictions, taken independently: one forward pass per sentence, first sub-tokens only.
    gold, guess = [], []
    with torch.no_grad():
        for i in range(len(data["labels"])):
            width = int(data["lengths"][i])
            logits = model(input_ids=data["input_ids"][i : i + 1, :width].long(), attention_mask=data["attention_mask"][i : i + 1, :width].long()).logits
            first = data["labels"][i, :width] != -100
            gold.append([tiny.TAGS[t] for t in data["labels"][i, :width][first].tolist()])
            guess.append([tiny.TAGS[t] for t in logits[0].argmax(-1)[first].tolist()])
    rows = [json.loads(line) for p in tiny_ner["dev"] for line in p.read_text().splitlines()]
    assert gold == [row["tags"] for row in rows]  # every word kept its tag, on its first sub-token
    expected = f1_score(gold, guess, mode="strict", scheme=IOB2)
    assert task.metrics(stats)["entity_f1"] == pytest.approx(expected, abs=1e-12)
    assert 0 < expected < 1


def test_regression_metrics_equal_scipy_and_sklearn(tiny_regression):
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_squared_error

    model, data = _encoded_dev(tiny_regression, "regression")
    task = taskpool.task("regression")
    [stats] = task.score(model, data, range(len(data["labels"])), batch_size=8, num_labels=1)
    x, y = np.asarray(stats["predictions"]), np.asarray(stats["targets"])
    scores = task.metrics(stats)
    assert scores["pearson"] == pytest.approx(pearsonr(x, y).statistic, abs=1e-9)
    assert scores["spearman"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-9)
    assert scores["mse"] == pytest.approx(mean_squared_error(y, x), abs=1e-9)
    assert scores["pearson"] > 0.5  # the member learned its domain's scores
    ties = {"predictions": [1.0, 1.0, 2.0, 3.0], "targets": [1.0, 2.0, 2.0, 5.0]}
    assert task.metrics(ties)["spearman"] == pytest.approx(spearmanr(ties["predictions"], ties["targets"]).statistic, abs=1e-12)
    assert task.metrics({"predictions": [2.0, 2.0], "targets": [1.0, 3.0]})["pearson"] == 0.0  # constant: undefined, 0


@pytest.mark.parametrize("kind", ["regression", "token_classification"])
def test_new_statistics_add_up_to_identical_metrics_for_any_shard_count(kind, tiny_regression, tiny_ner):
    model, data = _encoded_dev(tiny_regression if kind == "regression" else tiny_ner, kind)
    task = taskpool.task(kind, TAG2ID if kind == "token_classification" else None)
    num_labels = 1 if kind == "regression" else len(TAG2ID)
    groups = data["source"].long()  # per dev source, as fitness groups them
    results = []
    for shards in (1, 2, 3, 5):
        parts = [
            task.score(model, data, taskpool.shard_range(len(data["labels"]), 4, shards, s), batch_size=4, num_labels=num_labels, groups=groups, n_groups=2)
            for s in range(shards)
        ]
        per_source = [task.add(p) for p in zip(*parts)]
        results.append((per_source, task.metrics(task.add(per_source)), task.aggregate(per_source, task.type.metrics[0], "mean_domain")))
    assert all(r == results[0] for r in results[1:])
    assert [task.size(s) for s in results[0][0]] == [40, 40]


@pytest.mark.parametrize(
    "kind, merger, metric",
    [("regression", "fisher", "pearson"), ("regression", "regmean", "mse"), ("token_classification", "fisher", "entity_f1"), ("token_classification", "ties", "entity_f1")],
)
def test_single_task_runs_are_shard_invariant_and_their_fused_model_reproduces_its_score(kind, merger, metric, tiny_regression, tiny_ner, tmp_path):
    population = tiny_regression if kind == "regression" else tiny_ner
    columns = {"label_column": "score"} if kind == "regression" else {"text_column": "tokens", "label_column": "tags"}
    extra = {"base_model": str(population["base"])} if merger == "ties" else {}
    config = _config(population, tmp_path, data={"task_type": kind, **columns}, merger=merger, metric=metric, **extra)
    one = _run(config, tmp_path / "one", "--set", "shards=1")
    three = _run(config, tmp_path / "three", "--set", "shards=3", "--set", f"store={tmp_path / 'store3'}")
    assert one["generations"] == three["generations"] and one["fused_model_sha256"] == three["fused_model_sha256"]
    final = one["final"]
    assert set(final["dev"]) == {*taskpool.get_task_type(kind).metrics, "n"}
    assert set(final["heldout"]) == set(population["test"]) and final["heldout"]["travel"]["n"] == 40  # the CoNLL file too
    best = [g["best_fitness"] for g in one["generations"]]
    assert best == sorted(best)
    assert best[-1] == taskpool.fitness_value(metric, final["dev"][metric])  # mse is minimised: fitness is its negation
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    check = audit.verify(audit.collect(one["mlflow_run_id"], uri), uri)  # loads the fused model from MLflow with its Auto class
    assert check["match"] and check["recomputed"] == final["dev"][metric]


def test_bad_task_configs_and_data_fail_before_compute(tiny_population, tiny_regression, tiny_ner, tmp_path):
    from tasks import stages
    from tasks.taskpool import DataError

    with pytest.raises(ConfigError, match="metric macro_f1 does not fit task_type regression"):
        EvolverConfig.from_dict({"models": ["a", "b"], "data": {"dev": "d.csv", "task_type": "regression"}, "metric": "macro_f1"})
    assert EvolverConfig.from_dict({"models": ["a", "b"], "data": {"dev": "d.csv", "task_type": "regression"}}).metric == "pearson"
    with pytest.raises(ConfigError, match="data.task_type"):
        EvolverConfig.from_dict({"models": ["a", "b"], "data": {"dev": "d.csv", "task_type": "ranking"}})
    with pytest.raises(ConfigError, match="text_pair_column: token classification"):
        EvolverConfig.from_dict({"models": ["a", "b"], "data": {"dev": "d.csv", "task_type": "token_classification", "text_pair_column": "q"}})

    def fails(population, data, match, error=DataError, name="x"):
        config = _config(population, tmp_path / name, data=data)
        with pytest.raises(error, match=match):
            conf = yaml.safe_load(config.read_text())
            stages.download_models(conf, name)
            stages.init_population(conf, name)
        assert not (tmp_path / name / "store" / name / "init.json").exists()

    # A regression run over 3-label classifiers; a classification run over one-output heads.
    fails(tiny_population, {"task_type": "regression", "label_column": "label"}, "regression needs a head with one output", name="heads")
    fails(tiny_regression, {"label_column": "score"}, "a head with 1 output scores regression", name="one-output")
    # Targets that are not numbers (the classification CSVs' label names), naming the source.
    fails(
        tiny_regression,
        {"task_type": "regression", "dev": [str(p) for p in tiny_population["dev"]], "heldout": {}},
        r"books_dev.csv: regression targets must be finite numbers",
        name="targets",
    )
    bad_tags = tiny.write_jsonl(tmp_path / "bad_tags.jsonl", [(["anna", "went"], ["B-PERSON", "O"])])
    ner = {"task_type": "token_classification", "text_column": "tokens", "label_column": "tags"}
    fails(tiny_ner, {**ner, "dev": str(bad_tags), "heldout": {}}, r"bad_tags.jsonl: tags \['B-PERSON'\] are not in the models' label2id", name="tags")
    uneven = tiny.write_conll(tmp_path / "uneven.conll", [(["anna"], ["B-PER"])])
    uneven.write_text(uneven.read_text() + "went\n\nlima\tB-LOC\tx\n")  # "went" has no tag
    fails(tiny_ner, {**ner, "dev": str(uneven), "heldout": {}}, r"uneven.conll: line 2: expected a token and its tag", name="uneven")
    fails(tiny_population, {"dev": str(tiny_ner["test"]["travel"]), "heldout": {}}, r"travel_test.conll: a .conll file is read as CoNLL", name="conll")
    words = {**ner, "text_column": "text", "label_column": "label", "dev": [str(p) for p in tiny_population["dev"]], "heldout": {}}
    fails(tiny_ner, words, "books_dev.csv: row 0: token classification needs a list of words in 'text'", name="words")


def test_finetune_learns_tags_and_numbers(tmp_path):
    """The benchmark's members of the new task types: a token classifier from JSONL tokens and tags (each tag on
    its word's first sub-token, "annas" split in two), and a regressor with one output."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, BertModel

    from tasks.finetune import finetune

    base = tmp_path / "base"
    torch.manual_seed(0)
    BertModel(tiny.bert_config(len(tiny.ner_vocabulary()))).save_pretrained(base)
    tokenizer = tiny.ner_tokenizer()
    tokenizer.save_pretrained(base)
    recipe = dict(base_model=base, epochs=30, lr=3e-3, batch_size=8, seed=0, device="cpu", log=lambda _: None)

    tagged = [(["we", "saw", name, "in", "paris"], ["O", "O", "B-PER", "O", "B-LOC"]) for name in ("anna", "annas", "omar")] * 4
    out = finetune(tiny.write_jsonl(tmp_path / "ner.jsonl", tagged), tmp_path / "ner", labels=tiny.TAGS, task_type="token_classification", **recipe)
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    enc = tokenizer([w for w, _ in tagged[:3]], is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**enc).logits.argmax(-1)
    for i, (words, tags) in enumerate(tagged[:3]):
        first = [j for j, w in enumerate(enc.word_ids(i)) if w is not None and w != (enc.word_ids(i)[j - 1] if j else None)]
        assert [model.config.id2label[int(predicted[i, j])] for j in first] == tags

    scored = [(f"it was {word}", score) for word, score in (("tasty", 4.5), ("bland", 0.5), ("menu", 2.5))] * 4
    recipe.update(epochs=60, batch_size=4)  # a one-output head starts at the mean: it needs more steps to spread
    out = finetune(tiny.write_csv(tmp_path / "scores.csv", scored), tmp_path / "score", labels=(), task_type="regression", **recipe)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 1 and json.loads((out / "finetune.json").read_text())["args"]["task_type"] == "regression"
    with torch.no_grad():
        predicted = model(**tokenizer([t for t, _ in scored[:3]], padding=True, return_tensors="pt")).logits[:, 0]
    assert predicted.argsort().tolist() == [1, 2, 0] and torch.allclose(predicted, torch.tensor([4.5, 0.5, 2.5]), atol=1.0)
