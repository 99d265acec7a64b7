"""Tiny real checkpoints and data for tests: a 2-layer BERT (hidden 32) fine-tuned briefly per 'domain'.

Each domain has its own keyword -> sentiment words, so members really differ and fusion has something to do.
Everything is seeded: the same call writes the same files.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

LABELS = ("negative", "neutral", "positive")
DOMAIN_WORDS = {
    "books": {"negative": ["boring", "dull"], "neutral": ["novel", "chapter"], "positive": ["gripping", "moving"]},
    "food": {"negative": ["stale", "bland"], "neutral": ["menu", "plate"], "positive": ["tasty", "fresh"]},
    "travel": {"negative": ["delayed", "lost"], "neutral": ["gate", "ticket"], "positive": ["smooth", "friendly"]},
}
FILLER = ["the", "a", "it", "was", "very", "and", "this", "we", "so", "really", "today", "again"]


def vocabulary() -> list[str]:
    words = sorted({w for domain in DOMAIN_WORDS.values() for ws in domain.values() for w in ws} | set(FILLER) | {"pills", "doctor"})
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]


def tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocabulary())})


def sentences(domain: str, n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(f"{domain}/{seed}")
    rows = []
    for _ in range(n):
        label = rng.choice(LABELS)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
        words.insert(rng.randint(0, len(words)), rng.choice(DOMAIN_WORDS[domain][label]))
        rows.append((" ".join(words), label))
    return rows


def sentence_pairs(domain: str, n: int, seed: int) -> list[tuple[str, str, str]]:
    """(question, passage, label) rows: a filler question, and the domain's sentence with its keyword as the passage."""
    rng = random.Random(f"{domain}/{seed}/question")
    return [(" ".join(rng.choices(FILLER, k=rng.randint(2, 4))), passage, label) for passage, label in sentences(domain, n, seed)]


def write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def base_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocabulary()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    return BertForSequenceClassification(config)


def finetune(model, rows: list[tuple[str, str]], *, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    tok = tokenizer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = [rows[(step * 16 + k) % len(rows)] for k in range(16)]
        enc = tok([t for t, _ in batch], padding=True, return_tensors="pt")
        labels = torch.tensor([LABELS.index(label) for _, label in batch])
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build(root: Path, steps: int = 40) -> dict[str, Path | list[Path]]:
    """Base + one member per domain under root/models, CSVs under root/data."""
    tok = tokenizer()
    base = base_model()
    base_dir = root / "models" / "base"
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    members = []
    for k, domain in enumerate(DOMAIN_WORDS):
        model = base_model()
        finetune(model, sentences(domain, 200, seed=1), steps=steps, seed=k)
        folder = root / "models" / domain
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        members.append(folder)
    data = root / "data"
    dev = [write_csv(data / f"{d}_dev.csv", sentences(d, 40, seed=2)) for d in DOMAIN_WORDS]
    test = {d: write_csv(data / f"{d}_test.csv", sentences(d, 40, seed=3)) for d in DOMAIN_WORDS}
    ood_rows = [(f"the doctor said {w}", label) for label in LABELS for w in ("pills", "really", "today")]
    ood = write_csv(data / "ood_test.csv", ood_rows * 3)
    return {"base": base_dir, "members": members, "dev": dev, "test": test, "ood": ood}
