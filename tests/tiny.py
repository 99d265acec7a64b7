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

from tasks.taskpool.tokens import align  # each word's tag on its first sub-token, as the task pool scores it

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


def bert_config(vocab_size: int, labels: tuple[str, ...] | None = None, **head) -> BertConfig:
    """The tiny BERT (2 layers, hidden 32) with a head for these labels, or `head` settings (num_labels=1)."""
    named = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}} if labels else {}
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
    return BertConfig(vocab_size=vocab_size, **{**shape, **named, **head})


def base_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(bert_config(len(vocabulary()), LABELS))


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


# -- regression: a sentiment score in [0, 5] per sentence, from a one-output head ----------------------------

SCORES = {"negative": 0.5, "neutral": 2.5, "positive": 4.5}


def scored_sentences(domain: str, n: int, seed: int) -> list[tuple[str, float]]:
    """The domain's sentences with a noisy score for their label instead of the label."""
    rng = random.Random(f"{domain}/{seed}/score")
    return [(text, round(SCORES[label] + rng.uniform(-0.5, 0.5), 2)) for text, label in sentences(domain, n, seed)]


def regression_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(bert_config(len(vocabulary()), num_labels=1, problem_type="regression"))


def _train(model, batches, *, steps: int, seed: int) -> None:
    """AdamW on the model's own loss over `batches(step)` (keyword arguments of the model)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        model(**batches(step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _build_members(root: Path, tok, make_model, rows_of, encode_batch, steps: int) -> tuple[Path, list[Path]]:
    """An untrained base, and a books and a food member trained on `rows_of(domain)`, saved under root/models."""
    base_dir = root / "models" / "base"
    make_model().save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    members = []
    for k, domain in enumerate(("books", "food")):
        model, rows = make_model(), rows_of(domain)
        _train(model, lambda step, rows=rows: encode_batch([rows[(step * 16 + j) % len(rows)] for j in range(16)]), steps=steps, seed=k)
        folder = root / "models" / domain
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        members.append(folder)
    return base_dir, members


def build_regression(root: Path, steps: int = 40) -> dict[str, Path | list[Path]]:
    """Base + a books and a food regression member under root/models, CSVs (text, score) under root/data."""
    tok = tokenizer()

    def encode_batch(batch):
        return {**tok([t for t, _ in batch], padding=True, return_tensors="pt"), "labels": torch.tensor([s for _, s in batch])}

    base_dir, members = _build_members(root, tok, regression_model, lambda d: scored_sentences(d, 200, seed=1), encode_batch, steps)
    data = root / "data"
    header = ("text", "score")
    dev = [write_csv(data / f"{d}_dev.csv", scored_sentences(d, 40, seed=2), header) for d in ("books", "food")]
    test = {d: write_csv(data / f"{d}_test.csv", scored_sentences(d, 40, seed=3), header) for d in ("books", "food", "travel")}
    return {"base": base_dir, "members": members, "dev": dev, "test": test}


# -- token classification: people and places in sentences, IOB2 tags -----------------------------------------

TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# Names and places per domain; "##s" lets a possessive ("annas") split into two sub-tokens, so that tags are
# aligned to first sub-tokens for real.
ENTITIES = {
    "books": {"PER": [["anna"], ["anna", "karenina"], ["omar"]], "LOC": [["paris"], ["new", "york"]]},
    "food": {"PER": [["omar"], ["chef", "omar"]], "LOC": [["lima"], ["paris"], ["new", "york"]]},
    "travel": {"PER": [["anna"]], "LOC": [["lima"], ["rio"], ["new", "york"]]},
}


def ner_vocabulary() -> list[str]:
    names = sorted({w for domain in ENTITIES.values() for spans in domain.values() for span in spans for w in span})
    return vocabulary() + [w for w in names if w not in vocabulary()] + ["##s"]


def ner_tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(ner_vocabulary())})


def tagged_sentences(domain: str, n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """(words, tags) rows: filler words with one or two entities of the domain, some names possessive."""
    rng = random.Random(f"{domain}/{seed}/ner")
    rows = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        tags = ["O"] * len(words)
        for _ in range(rng.randint(1, 2)):
            kind = rng.choice(sorted(ENTITIES[domain]))
            span = list(rng.choice(ENTITIES[domain][kind]))
            if rng.random() < 0.3:
                span[-1] += "s"
            at = rng.randint(0, len(words))
            words[at:at] = span
            tags[at:at] = [f"B-{kind}"] + [f"I-{kind}"] * (len(span) - 1)
        rows.append((words, tags))
    return rows


def ner_model(seed: int = 0):
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    return BertForTokenClassification(bert_config(len(ner_vocabulary()), TAGS))


def write_jsonl(path: Path, rows: list[tuple[list[str], list[str]]]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"tokens": words, "tags": tags}) + "\n" for words, tags in rows))
    return path


def write_conll(path: Path, rows: list[tuple[list[str], list[str]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) for words, tags in rows))
    return path


def build_ner(root: Path, steps: int = 40) -> dict[str, Path | list[Path]]:
    """Base + a books and a food NER member under root/models; JSONL (tokens, tags) dev and test sets, and the
    travel test set as a CoNLL file, under root/data."""
    tok = ner_tokenizer()

    def encode_batch(batch):
        enc = tok([w for w, _ in batch], is_split_into_words=True, padding=True, return_tensors="pt")
        labels = [align(enc.word_ids(i), [TAGS.index(t) for t in tags]) for i, (_, tags) in enumerate(batch)]
        return {**enc, "labels": torch.tensor(labels)}

    base_dir, members = _build_members(root, tok, ner_model, lambda d: tagged_sentences(d, 200, seed=1), encode_batch, steps)
    data = root / "data"
    dev = [write_jsonl(data / f"{d}_dev.jsonl", tagged_sentences(d, 40, seed=2)) for d in ("books", "food")]
    test = {d: write_jsonl(data / f"{d}_test.jsonl", tagged_sentences(d, 40, seed=3)) for d in ("books", "food")}
    test["travel"] = write_conll(data / "travel_test.conll", tagged_sentences("travel", 40, seed=3))
    return {"base": base_dir, "members": members, "dev": dev, "test": test}


# -- cross-task: four members of one base, each fine-tuned on another task with its own head ---------------------

ANSWERS = ("no", "yes")


def cross_task_model(task: str, seed: int = 0):
    """A member for `task` over the shared vocabulary: the same body initialisation, the task's own head."""
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    size = len(ner_vocabulary())
    if task == "ner":
        return BertForTokenClassification(bert_config(size, TAGS))
    if task == "score":
        return BertForSequenceClassification(bert_config(size, num_labels=1, problem_type="regression"))
    return BertForSequenceClassification(bert_config(size, LABELS if task == "sentiment" else ANSWERS))


def build_cross_task(root: Path, steps: int = 40) -> dict:
    """A base and four members of it, fine-tuned on four tasks: `sentiment` (3 labels), `qa` (2 labels, question
    and passage pairs), `score` (regression) and `ner` (5 IOB2 tags); each task's dev and test files."""
    tok = ner_tokenizer()
    base_dir = root / "models" / "base"
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(bert_config(len(ner_vocabulary()))).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)

    def qa_rows(n, seed):
        return [(q, p, "yes" if label == "positive" else "no") for q, p, label in sentence_pairs("food", n, seed)]

    rows = {
        "sentiment": lambda n, seed: sentences("books", n, seed) + sentences("travel", n, seed),
        "qa": qa_rows,
        "score": lambda n, seed: scored_sentences("food", n, seed),
        "ner": lambda n, seed: tagged_sentences("books", n, seed) + tagged_sentences("food", n, seed),
    }

    def encode_batch(task, batch):
        if task == "ner":
            enc = tok([w for w, _ in batch], is_split_into_words=True, padding=True, return_tensors="pt")
            labels = [align(enc.word_ids(i), [TAGS.index(t) for t in tags]) for i, (_, tags) in enumerate(batch)]
            return {**enc, "labels": torch.tensor(labels)}
        if task == "qa":
            return {**tok([q for q, _, _ in batch], [p for _, p, _ in batch], padding=True, return_tensors="pt"), "labels": torch.tensor([ANSWERS.index(a) for *_, a in batch])}
        enc = tok([t for t, _ in batch], padding=True, return_tensors="pt")
        target = [s for _, s in batch] if task == "score" else [LABELS.index(label) for _, label in batch]
        return {**enc, "labels": torch.tensor(target)}

    members, dev, test, data = [], {}, {}, root / "data"
    for k, task in enumerate(rows):
        model, train = cross_task_model(task), rows[task](200, 1)
        _train(model, lambda step, task=task, train=train: encode_batch(task, [train[(step * 16 + j) % len(train)] for j in range(16)]), steps=steps, seed=k)
        folder = root / "models" / task
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        members.append(folder)
        for split, n, seed in (("dev", 24, 2), ("test", 24, 3)):
            path = data / f"{task}_{split}"
            if task == "ner":
                written = write_jsonl(path.with_suffix(".jsonl"), rows[task](n, seed))
            elif task == "qa":
                written = write_csv(path.with_suffix(".csv"), rows[task](n, seed), ("question", "passage", "answer"))
            else:
                written = write_csv(path.with_suffix(".csv"), rows[task](n, seed), ("text", "score" if task == "score" else "label"))
            (dev if split == "dev" else test)[task] = written
    columns = {
        "sentiment": {},
        "qa": {"text_column": "question", "text_pair_column": "passage", "label_column": "answer"},
        "score": {"label_column": "score", "task_type": "regression"},
        "ner": {"text_column": "tokens", "label_column": "tags", "task_type": "token_classification"},
    }
    tasks = [{"name": task, "dev": str(dev[task]), "heldout": {"test": str(test[task])}, "batch_size": 8, **columns[task]} for task in rows]
    return {"base": base_dir, "members": members, "tasks": tasks}


# -- decoders: GPT-2 and Llama sequence classifiers, shipped as such models are, with no pad token -------------

DECODER_FAMILIES = ("gpt2", "llama")


def word_tokenizer():
    """A word-level tokenizer over the sentiment vocabulary with an end-of-sequence token and, like GPT-2's and
    Llama's, no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", *vocabulary()[5:], *PROMPT.split()[1:], *LABELS]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")


# Generative members learn to continue a sentence with its label: what rank classification reads back.
PROMPT = "{text} so it was"
VERBALIZERS = {"negative": "negative", "neutral": "neutral", "positive": "very positive"}  # one of two tokens


def decoder_model(family: str, seed: int = 0):
    """A 2-layer decoder (hidden 32) with a sequence head for LABELS; Llama with grouped-query attention."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    named = {"num_labels": len(LABELS), "id2label": dict(enumerate(LABELS)), "label2id": {label: i for i, label in enumerate(LABELS)}}
    size, eos = len(word_tokenizer()), {"bos_token_id": 1, "eos_token_id": 1}
    if family == "gpt2":
        return GPT2ForSequenceClassification(GPT2Config(vocab_size=size, n_embd=32, n_layer=2, n_head=2, n_positions=64, **eos, **named))
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    return LlamaForSequenceClassification(LlamaConfig(vocab_size=size, max_position_embeddings=64, **shape, **eos, **named))


def build_decoder(root: Path, family: str, steps: int = 40) -> dict[str, Path | list[Path]]:
    """An untrained base and a books and a food member of `family`, as users fine-tune decoders: padded with
    the end-of-sequence token for training, saved with no pad_token_id in their configs and no pad token in
    their tokenizers. CSVs as `build`'s, under root/data."""
    import json

    tok, padded = word_tokenizer(), word_tokenizer()
    padded.pad_token = padded.eos_token

    def make_model():
        model = decoder_model(family)
        model.config.pad_token_id = padded.pad_token_id
        return model

    def encode_batch(batch):
        return {**padded([t for t, _ in batch], padding=True, return_tensors="pt"), "labels": torch.tensor([LABELS.index(label) for _, label in batch])}

    base_dir, members = _build_members(root, tok, make_model, lambda d: sentences(d, 200, seed=1), encode_batch, steps)
    for folder in [base_dir, *members]:
        config = json.loads((folder / "config.json").read_text())
        config["pad_token_id"] = None
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    data = root / "data"
    dev = [write_csv(data / f"{d}_dev.csv", sentences(d, 40, seed=2)) for d in ("books", "food")]
    test = {d: write_csv(data / f"{d}_test.csv", sentences(d, 40, seed=3)) for d in ("books", "food", "travel")}
    return {"base": base_dir, "members": members, "dev": dev, "test": test}


def causal_lm(family: str, seed: int = 0):
    """A 2-layer causal LM (hidden 32) over `word_tokenizer`'s words: GPT-2 with its output layer tied to the
    embeddings (its default), Llama with its own."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    size, eos = len(word_tokenizer()), {"bos_token_id": 1, "eos_token_id": 1}
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=size, n_embd=32, n_layer=2, n_head=2, n_positions=64, **eos))
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    return LlamaForCausalLM(LlamaConfig(vocab_size=size, max_position_embeddings=64, tie_word_embeddings=False, **shape, **eos))


def build_causal_lm(root: Path, family: str, steps: int = 150) -> dict[str, Path | list[Path]]:
    """An untrained base and a books and a food causal LM of `family`, each trained on its domain's sentences;
    dev and test sets of text alone (one `text` column) under root/data."""
    tok, padded = word_tokenizer(), word_tokenizer()
    padded.pad_token = padded.eos_token

    def encode_batch(batch):
        enc = padded([f"{PROMPT.format(text=t)} {VERBALIZERS[label]}" for t, label in batch], padding=True, return_tensors="pt")
        return {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}

    base_dir, members = _build_members(root, tok, lambda: causal_lm(family), lambda d: sentences(d, 200, seed=1), encode_batch, steps)
    return {"base": base_dir, "members": members, **_generative_data(root / "data")}


def _generative_data(data: Path) -> dict:
    """Dev and test sets of text alone (`dev`, `test`: language modeling) and of text and label (`labelled_dev`,
    `labelled_test`: rank classification)."""
    out: dict = {}
    for key, columns in (("", ("text",)), ("labelled_", ("text", "label"))):
        rows = {(d, seed): [row[: len(columns)] for row in sentences(d, 40, seed=seed)] for d in ("books", "food", "travel") for seed in (2, 3)}
        out[f"{key}dev"] = [write_csv(data / f"{key}{d}_dev.csv", rows[d, 2], columns) for d in ("books", "food")]
        out[f"{key}test"] = {d: write_csv(data / f"{key}{d}_test.csv", rows[d, 3], columns) for d in ("books", "food", "travel")}
    return out


def t5_tokenizer():
    """`word_tokenizer`'s words with T5's conventions: a pad token (id 0) and </s> after every text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = word_tokenizer().get_vocab()
    words = ["<pad>", "</s>", "<unk>", *sorted(vocab, key=vocab.get)[2:]]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")


def build_t5(root: Path, steps: int = 60) -> dict:
    """An untrained base and a books and a food T5 (2 layers each side, d_model 32), each trained to write the
    label's verbalizer for the prompt; data as `build_causal_lm`'s."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = t5_tokenizer()

    def make_model():
        torch.manual_seed(0)
        shape = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2}
        return T5ForConditionalGeneration(T5Config(vocab_size=len(tok), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **shape))

    def encode_batch(batch):
        enc = tok([PROMPT.format(text=t) for t, _ in batch], padding=True, return_tensors="pt")
        target = tok([VERBALIZERS[label] for _, label in batch], padding=True, return_tensors="pt")
        return {**enc, "labels": target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)}

    base_dir, members = _build_members(root, tok, make_model, lambda d: sentences(d, 200, seed=1), encode_batch, steps)
    return {"base": base_dir, "members": members, **_generative_data(root / "data")}


def run_config(population: dict, folder: Path) -> dict:
    """A valid run config over the population of `build`: 3 generations, 2 shards, its store and MLflow database
    in folder."""
    return {
        "models": [str(m) for m in population["members"]],
        "data": {
            "dev": [str(p) for p in population["dev"]],
            "heldout": {**{k: str(v) for k, v in population["test"].items()}, "ood": str(population["ood"])},
            "out_of_domain": ["ood"],
            "batch_size": 16,
        },
        "generations": 3,
        "shards": 2,
        "store": str(folder / "store"),
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
    }
