"""Fine-tune one member from a training file: the members of a demo or benchmark population.

A sequence classifier or a regressor from a CSV file (columns text, label, and a pair column for sentence-pair
tasks), or a token classifier from a JSONL file (`{"tokens": [...], "tags": [...]}` a line), with each word's tag
on its first sub-token as the task pool scores it. A generative model (a causal LM, or T5) learns rank
classification: to write the gold label's verbalizer after the prompt, its loss on the verbalizer's tokens only,
encoded exactly as the task pool scores them (`taskpool.rank.encode_choices`).

A plain torch loop (AdamW, linear warm-up then decay) rather than `Trainer`: it is short, has no extra
dependencies (accelerate) and its every random draw comes from `seed`.

A finished checkpoint folder holds `finetune.json` (the arguments and the sha256 of the training file).
It is written last, inside a temporary folder that is renamed into place, so a folder that has it is
complete, and a second call with the same arguments returns at once instead of training again.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup, set_seed

from tasks.progress import Bar
from tasks.store import sha256_file

RECORD = "finetune.json"
_LOG_EVERY = 10  # steps whose mean loss the progress bar shows


def _read_rows(
    train_csv: Path,
    label2id: dict[str, int],
    pair_column: str | None = None,
    task_type: str = "sequence_classification",
    text_column: str = "text",
    label_column: str = "label",
) -> tuple[list, list[str] | None, list]:
    """Texts (word lists for token classification), second texts, and targets: label ids, numbers (regression)
    or tag id lists."""
    if task_type == "token_classification":
        rows = [json.loads(line) for line in train_csv.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"{train_csv}: no rows")
        unknown = sorted({t for row in rows for t in row["tags"]} - set(label2id))
        if unknown:
            raise ValueError(f"{train_csv}: tags {unknown[:10]} are not among {sorted(label2id)}")
        return [row["tokens"] for row in rows], None, [[label2id[t] for t in row["tags"]] for row in rows]
    # dtype=str and no NA parsing: a text such as "NA" stays text, and label names stay names.
    table = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    missing = {text_column, label_column, *([pair_column] if pair_column else [])} - set(table.columns)
    if missing:
        raise ValueError(f"{train_csv}: missing column(s) {sorted(missing)}; it has {list(table.columns)}")
    if table.empty:
        raise ValueError(f"{train_csv}: no rows")
    pairs = table[pair_column].tolist() if pair_column else None
    if task_type == "regression":
        return table[text_column].tolist(), pairs, [float(v) for v in table[label_column]]
    unknown = sorted(set(table[label_column]) - set(label2id))
    if unknown:
        raise ValueError(f"{train_csv}: labels {unknown[:10]} are not among {sorted(label2id)}")
    return table[text_column].tolist(), pairs, [label2id[label] for label in table[label_column]]


def _head(task_type: str, labels: list[str]) -> dict:
    """`from_pretrained`'s settings for a new head: one output for regression, else one per label, named; none
    for rank classification, which scores the model's own language-model head."""
    if task_type == "rank_classification":
        return {}
    if task_type == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


def _batch(tokenizer, texts: list, pairs: list[str] | None, targets: list, rows: list[int], max_length: int, task_type: str, generative: dict | None = None) -> dict:
    """One training batch, tokenised as `taskpool.encode` tokenises evaluation rows; `generative`: rank
    classification's prompt, verbalizers and seq2seq flag."""
    if task_type == "rank_classification":
        from tasks.taskpool.rank import encode_choices

        chosen = encode_choices(tokenizer, [texts[i] for i in rows], [pairs[i] for i in rows] if pairs else None, max_length=max_length, **generative)
        gold = torch.tensor([targets[i] for i in rows])
        pick = lambda t: t[torch.arange(len(rows)), gold].long()  # each row's sequence for its own label
        ids, mask, labels = pick(chosen["input_ids"]), pick(chosen["attention_mask"]), pick(chosen["choice_targets"])
        width = int(mask.sum(1).max()) if not generative["seq2seq"] else ids.shape[1]
        # A causal LM's labels are its input ids where scored (the model shifts them); T5's are the decoder targets.
        return {"input_ids": ids[:, :width], "attention_mask": mask[:, :width], "labels": labels[:, :width]}
    if task_type == "token_classification":
        from tasks.taskpool.tokens import align

        enc = tokenizer([texts[i] for i in rows], is_split_into_words=True, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        labels = [align(enc.word_ids(k), targets[i]) for k, i in enumerate(rows)]
        return {**enc, "labels": torch.tensor(labels)}
    if pairs is None:
        # Padding per batch to its longest text, not to max_length: most tweets are far shorter.
        enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    else:  # as taskpool.encode tokenises pairs: a long second text cannot crowd out the first
        enc = tokenizer([texts[i] for i in rows], [pairs[i] for i in rows], padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt")
    return {**enc, "labels": torch.tensor([targets[i] for i in rows])}


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _optimizer(parameters, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # The usual BERT recipe: no weight decay on biases and LayerNorm weights (decaying them only hurts).
    decay, no_decay = [], []
    for param in parameters:
        (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def _train_step(model: torch.nn.Module, batch: dict, dev: torch.device, optimizer, scheduler) -> float:
    """One optimisation step on one batch; its loss."""
    loss = model(**{name: tensor.to(dev) for name, tensor in batch.items()}).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _loss_bar(total: int, label: str, log) -> Callable[[int, list[float]], None]:
    """A progress bar over the steps, showing the mean loss of the last _LOG_EVERY of them."""
    bar = Bar(total, f"{label} ", log)
    return lambda step, losses: bar.update(step, f"loss {statistics.fmean(losses[-_LOG_EVERY:]):.4f}")


def _partial_folder(out_dir: Path) -> Path:
    """An empty sibling of out_dir to save into; what a crashed run left there is cleared."""
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _replace_folder(tmp: Path, out_dir: Path, record_name: str = RECORD) -> None:
    """Move a finished temporary folder to out_dir, replacing an earlier checkpoint of ours (one with the
    record file `record_name`)."""
    if out_dir.exists():
        # Only a folder this module wrote (it has the record) or an empty one is ours to replace.
        if not (out_dir / record_name).is_file() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} exists and is not a fine-tuned checkpoint; not overwriting it")
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def finetune(
    train_csv: Path,
    out_dir: Path,
    *,
    base_model: Path,
    labels: Sequence[str],
    epochs: int = 4,
    lr: float = 1e-4,
    batch_size: int = 32,
    max_length: int = 64,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str = "auto",
    text_pair_column: str | None = None,
    task_type: str = "sequence_classification",
    text_column: str = "text",
    label_column: str = "label",
    prompt: str | None = None,
    verbalizers: dict[str, str] | None = None,
    log: Callable[[str], object] = print,
) -> Path:
    """Fine-tune base_model on train_csv (columns `text_column`, `label_column`, and the second text of a
    sentence-pair task in `text_pair_column`, encoded as the task pool encodes pairs; for token classification a
    JSONL file of tokens and tags) and save it with its tokenizer to out_dir. `labels`: the label or tag names
    (none for regression). Rank classification (a causal LM or T5 base): `prompt` ({text}, {text_pair}) and
    `verbalizers` {label: text} for every label, as the run config's `data` block gives them.

    Returns out_dir. If out_dir already holds a checkpoint made with the same arguments from a training file
    with the same content, nothing is trained. `device` is not part of that identity: it changes speed, not
    the recipe.
    """
    train_csv, out_dir, base_model = Path(train_csv), Path(out_dir), Path(base_model)
    args = {
        "base_model": str(base_model.resolve()),
        "labels": list(labels),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "seed": seed,
        "train_csv_sha256": sha256_file(train_csv),
    }
    if text_pair_column is not None:  # only then: single-text checkpoints made before it stay up to date
        args["text_pair_column"] = text_pair_column
    if task_type != "sequence_classification":  # likewise
        args["task_type"] = task_type
    if (text_column, label_column) != ("text", "label"):  # likewise
        args.update(text_column=text_column, label_column=label_column)
    generative = None
    if task_type == "rank_classification":
        from tasks.modelpool import is_encoder_decoder

        missing = [label for label in labels if not (verbalizers or {}).get(label)]
        if missing:
            raise ValueError(f"rank_classification: no verbalizer for label(s) {missing}; give verbalizers {{label: text}} for every label")
        prompt = prompt if prompt is not None else ("{text} {text_pair}" if text_pair_column else "{text}")
        args.update(prompt=prompt, verbalizers={label: verbalizers[label] for label in labels})
        generative = {"prompt": prompt, "verbalizers": [verbalizers[label] for label in labels], "seq2seq": is_encoder_decoder(base_model)}
    record_path = out_dir / RECORD
    if record_path.is_file() and json.loads(record_path.read_text()).get("args") == args:
        log(f"{out_dir}: up to date, not fine-tuning again")
        return out_dir

    label2id = {label: i for i, label in enumerate(labels)}
    texts, pairs, targets = _read_rows(train_csv, label2id, text_pair_column, task_type, text_column, label_column)
    dev = _resolve_device(device)
    set_seed(seed)  # python, numpy and torch (CPU and CUDA): the new classifier head and dropout draw from it
    from tasks.modelpool import auto_class, load_tokenizer, pad_token_id

    # Padded as the task pool pads: a decoder shipped without a pad token (GPT-2, Llama) pads with its end token,
    # and its sequence head reads the last token that is not that id.
    tokenizer = load_tokenizer(base_model)
    model = auto_class(task_type, base_model).from_pretrained(base_model, **_head(task_type, labels)).to(dev)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id(base_model)
    optimizer = _optimizer(model.parameters(), lr, weight_decay)
    steps_per_epoch = math.ceil(len(texts) / batch_size)
    total = steps_per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=int(warmup * total), num_training_steps=total
    )
    order_rng = torch.Generator().manual_seed(seed)
    log(f"fine-tuning {base_model} on {train_csv} ({len(texts)} rows, {epochs} epochs, {total} steps) on {dev}")

    started = time.perf_counter()
    model.train()
    step, losses, progress = 0, [], _loss_bar(total, out_dir.name, log)
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=order_rng).tolist()
        for begin in range(0, len(order), batch_size):
            batch = _batch(tokenizer, texts, pairs, targets, order[begin : begin + batch_size], max_length, task_type, generative)
            losses.append(_train_step(model, batch, dev, optimizer, scheduler))
            step += 1
            progress(step, losses)
    seconds = time.perf_counter() - started

    # Everything goes to a sibling temporary folder first; the record is its last file, and the rename
    # publishes the whole checkpoint at once. A crash leaves only the temporary folder, cleared next time.
    tmp = _partial_folder(out_dir)
    model.eval()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    result = {"rows": len(texts), "steps": total, "seconds": round(seconds, 1), "device": str(dev)}
    (tmp / RECORD).write_text(json.dumps({"args": args, "result": result}, indent=2, sort_keys=True) + "\n")
    _replace_folder(tmp, out_dir)
    log(f"saved {out_dir} ({seconds:.0f}s)")
    return out_dir


def finetune_multitask(
    tasks: Sequence[dict],
    out_dir: Path,
    *,
    base_model: Path,
    epochs: int = 4,
    lr: float = 1e-4,
    batch_size: int = 32,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str = "auto",
    log: Callable[[str], object] = print,
) -> Path:
    """Fine-tune one body with one head per task, jointly: the multi-task upper bound of a cross-task fusion.

    `tasks`: dicts with `name`, `train` (a training file as `finetune` reads it), `labels`, `task_type`,
    `max_length` and optionally `text_pair_column`, `text_column`, `label_column`. Every task's model is built
    from base_model with its own head; the modules directly under the body (`bert.embeddings`, `bert.encoder`,
    ...) that every task's model has are then one shared object, so they get every task's gradients, while the rest (the heads, and BERT's
    pooler, which token classifiers lack) stays each task's own. An epoch is every task's batches, shuffled
    together; each step is one task's batch and loss. Saves out_dir/<name>/ per task (shared body plus that
    task's head, loadable with the task's Auto class) and, last, out_dir/finetune.json; cached like `finetune`.
    """
    from tasks.modelpool import auto_class

    out_dir, base_model = Path(out_dir), Path(base_model)
    specs = [{**t, "train": Path(t["train"])} for t in tasks]
    args = {
        "base_model": str(base_model.resolve()),
        "tasks": [
            {**{k: v for k, v in t.items() if k != "train"}, "labels": list(t["labels"]), "train_sha256": sha256_file(t["train"])}
            for t in specs
        ],
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "seed": seed,
    }
    record_path = out_dir / RECORD
    if record_path.is_file() and json.loads(record_path.read_text()).get("args") == args:
        log(f"{out_dir}: up to date, not fine-tuning again")
        return out_dir

    dev = _resolve_device(device)
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    models, rows = [], []
    for t in specs:
        label2id = {label: i for i, label in enumerate(t["labels"])}
        rows.append(_read_rows(t["train"], label2id, t.get("text_pair_column"), t["task_type"], t.get("text_column", "text"), t.get("label_column", "label")))
        models.append(auto_class(t["task_type"]).from_pretrained(base_model, **_head(t["task_type"], t["labels"])).to(dev))
    bodies = [getattr(m, m.base_model_prefix) for m in models]
    # named_children skips a child set to None, as BERT's pooler is in a token classifier.
    shared = [name for name, _ in bodies[0].named_children() if all(name in dict(b.named_children()) for b in bodies)]
    for body in bodies[1:]:
        for name in shared:
            setattr(body, name, getattr(bodies[0], name))
    parameters = {id(p): p for m in models for p in m.parameters()}  # the shared body once
    optimizer = _optimizer(parameters.values(), lr, weight_decay)
    order_rng = torch.Generator().manual_seed(seed)
    per_epoch = sum(math.ceil(len(texts) / batch_size) for texts, _, _ in rows)
    total = per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=int(warmup * total), num_training_steps=total)
    names = ", ".join(f"{t['name']} ({len(r[0])} rows)" for t, r in zip(specs, rows))
    log(f"fine-tuning {base_model} jointly on {names} (shared: {', '.join(shared)}; {epochs} epochs, {total} steps) on {dev}")

    started = time.perf_counter()
    for m in models:
        m.train()
    step, losses, progress = 0, [], _loss_bar(total, out_dir.name, log)
    for _ in range(epochs):
        batches = []
        for k, (texts, _, _) in enumerate(rows):
            order = torch.randperm(len(texts), generator=order_rng).tolist()
            batches += [(k, order[b : b + batch_size]) for b in range(0, len(order), batch_size)]
        for i in torch.randperm(len(batches), generator=order_rng).tolist():
            k, chosen = batches[i]
            texts, pairs, targets = rows[k]
            batch = _batch(tokenizer, texts, pairs, targets, chosen, specs[k]["max_length"], specs[k]["task_type"])
            losses.append(_train_step(models[k], batch, dev, optimizer, scheduler))
            step += 1
            progress(step, losses)
    seconds = time.perf_counter() - started

    tmp = _partial_folder(out_dir)
    for t, m in zip(specs, models):
        m.eval()
        m.save_pretrained(tmp / t["name"])
        tokenizer.save_pretrained(tmp / t["name"])
    result = {"rows": {t["name"]: len(r[0]) for t, r in zip(specs, rows)}, "steps": total, "seconds": round(seconds, 1), "device": str(dev), "shared": shared}
    (tmp / RECORD).write_text(json.dumps({"args": args, "result": result}, indent=2, sort_keys=True) + "\n")
    _replace_folder(tmp, out_dir)
    log(f"saved {out_dir} ({seconds:.0f}s)")
    return out_dir

