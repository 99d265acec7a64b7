"""Evaluation data, whatever the task type: sources read, tokenised into padded tensors, cut into batches and
shards, and the dev rows that only validate.

Shards are runs of whole batches, and batch boundaries never depend on the shard count: every example is
scored in the same batch, with the same neighbours and padding, however many shards there are.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Sequence
from pathlib import Path

import torch

from tasks.config import InputError
from tasks.taskpool.registry import get_task_type

_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# One token and its tag a line, a blank line between sentences (CoNLL, WNUT): token classification only.
_CONLL_SUFFIXES = (".conll", ".conllu", ".iob", ".bio", ".txt")


# The encoded tensors a model reads; token_type_ids only where `encode` wrote them (pairs).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class DataError(InputError):
    """A data source that cannot be read or labelled; raised before any model runs."""


def read_source(
    source: str, text_column: str, label_column: str | None, text_pair_column: str | None = None, words: bool = False
) -> tuple[list, list[str] | None, list]:
    """Texts, their second texts (None without a pair column) and raw labels (None each without a label column:
    language modeling) from a file, a `save_to_disk` folder or a hub dataset (`name` or `name:split`). With
    `words` (token classification) a text is a list of words and its label a list of tags, one per word;
    CoNLL-style files give them without column names."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    try:
        if path.is_file() and path.suffix.lower() in _CONLL_SUFFIXES:
            if not words:
                raise DataError(f"{source}: a {path.suffix} file is read as CoNLL (a token and its tag a line), which only task_type: token_classification takes")
            sentences, tags = read_conll(path, source)
            return sentences, None, tags
        if path.is_file():
            fmt = _FILE_FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise DataError(f"{source}: unknown file type {path.suffix!r}; use one of {sorted(_FILE_FORMATS)}" + (f" or CoNLL {list(_CONLL_SUFFIXES)}" if words else ""))
            if fmt in ("csv", "json"):
                _check_text_file(path, source, header=fmt == "csv")
            extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            table = datasets.load_dataset(fmt, data_files=str(path), split="train", **extra)
        elif path.is_dir():
            table = datasets.load_from_disk(str(path))
            if isinstance(table, datasets.DatasetDict):
                raise DataError(f"{source}: a DatasetDict; point at one split's folder")
        elif source.startswith(("/", ".", "~")):
            raise DataError(f"data source {source!r} does not exist")
        else:
            name, _, split = source.partition(":")
            table = datasets.load_dataset(name, split=split or "validation")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"data source {source!r} cannot be read: {err}") from None
    columns = [c for c in (text_column, text_pair_column, label_column) if c is not None]
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; it has {table.column_names}")
    pairs = None if text_pair_column is None else [str(t) for t in table[text_pair_column]]
    if not words:
        raw = [None] * len(table) if label_column is None else list(table[label_column])
        return [str(t) for t in table[text_column]], pairs, raw
    texts, tags = list(table[text_column]), list(table[label_column])
    for row, (text, tag) in enumerate(zip(texts, tags)):
        if not isinstance(text, list) or not isinstance(tag, list):
            raise DataError(f"{source}: row {row}: token classification needs a list of words in {text_column!r} and a list of tags in {label_column!r}")
    return [[str(w) for w in text] for text in texts], pairs, tags


def read_conll(path: Path, source: str | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """Sentences of a CoNLL-style file: a token and its tag a line (tab- or space-separated, the tag last), a
    blank line between sentences; `-DOCSTART-` lines are skipped."""
    source = source or str(path)
    _check_text_file(path, source, header=False)
    sentences, tags, words, labels = [], [], [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if fields and fields[0] == "-DOCSTART-":
                continue
            if not fields:
                if words:
                    sentences.append(words)
                    tags.append(labels)
                words, labels = [], []
                continue
            if len(fields) < 2:
                raise DataError(f"{source}: line {number}: expected a token and its tag, got {line.strip()!r}")
            words.append(fields[0])
            labels.append(fields[-1])
    if words:
        sentences.append(words)
        tags.append(labels)
    return sentences, tags


def _check_text_file(path: Path, source: str, header: bool) -> None:
    """UTF-8 throughout, and at least one row: said plainly here, where the datasets reader would fail with a
    message about its own internals."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0
    with path.open("rb") as f:
        for chunk in itertools.chain(iter(lambda: f.read(1 << 20), b""), [b""]):  # b"": the end, where a cut-off character shows
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:  # err.object: this chunk after what the decoder held back from the last
                where = offset + len(chunk) - len(err.object) + err.start
                raise DataError(f"{source}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {where}); save it as UTF-8") from None
            offset += len(chunk)
            lines += sum(1 for line in chunk.splitlines() if line.strip()) if lines < 2 else 0
    if lines <= int(header):
        raise DataError(f"{source}: no rows")


def encode(
    sources: str | Sequence[str],
    *,
    tokenizer,
    text_column: str,
    label_column: str | None,
    label2id: dict[str, int],
    num_labels: int,
    max_length: int,
    text_pair_column: str | None = None,
    task_type: str = "sequence_classification",
    prompt: str | None = None,
    verbalizers: Sequence[str] | None = None,
    seq2seq: bool = False,
) -> dict[str, torch.Tensor]:
    """Tokenise one evaluation set (sources concatenated) into padded tensors plus per-example lengths and the
    index of the source each example came from (what per-domain fitness and the validation split group by).
    With a pair column every example is a pair of texts, and `token_type_ids` mark the second one where the
    tokenizer has segments. Token classification labels every sub-token (`tokens.align`); language modeling
    reads no label column, its targets are the text's own tokens. Rank classification renders each example
    through `prompt` once per label's verbalizer (`rank.encode_choices`; `seq2seq`: for T5)."""
    from tasks.taskpool.base import task

    kind = task(task_type, label2id)
    words, labelled = get_task_type(task_type).words, get_task_type(task_type).labelled
    label_column = label_column if labelled else None
    sources = [sources] if isinstance(sources, str) else list(sources)
    texts, pairs, labels, origin = [], [], [], []
    for index, source in enumerate(sources):
        source_texts, source_pairs, raw = read_source(source, text_column, label_column, text_pair_column, words=words)
        if not source_texts:
            raise DataError(f"{source}: no rows")
        if words:
            uneven = next((row for row, (t, tags) in enumerate(zip(source_texts, raw)) if len(t) != len(tags) or not t), None)
            if uneven is not None:
                raise DataError(f"{source}: row {uneven} has {len(source_texts[uneven])} words and {len(raw[uneven])} tags; it needs one tag per word, and a word")
        texts += source_texts
        if source_pairs is not None:
            pairs += source_pairs
        if labelled:
            labels.append(kind.encode_labels(raw, label2id=label2id, num_labels=num_labels, source=source))
        origin.append(torch.full((len(source_texts),), index, dtype=torch.int32))
    if verbalizers is not None:
        from tasks.taskpool.rank import encode_choices

        choices = encode_choices(tokenizer, texts, pairs or None, prompt=prompt or "{text}", verbalizers=verbalizers, max_length=max_length, seq2seq=seq2seq)
        return {**choices, "labels": torch.cat(labels), "source": torch.cat(origin)}
    if words:
        tokens = tokenizer(texts, is_split_into_words=True, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    elif text_pair_column is None:
        tokens = tokenizer(texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
    else:
        # longest_first trims the longer text of a pair a token at a time: a long passage cannot crowd out its question.
        tokens = tokenizer(texts, pairs, truncation="longest_first", max_length=max_length, padding="longest", return_tensors="pt")
    attention_mask = tokens["attention_mask"].to(torch.int8)
    encoded = {"input_ids": tokens["input_ids"].to(torch.int32), "attention_mask": attention_mask}
    # Single texts carry no segments: a BERT tokenizer's all-zero ones are what the model assumes without them.
    # RoBERTa-like tokenizers give pairs none either: separators alone mark the second text.
    if text_pair_column is not None and "token_type_ids" in tokens:
        encoded["token_type_ids"] = tokens["token_type_ids"].to(torch.int8)
    if words:
        from tasks.taskpool.tokens import align

        tags = [row for part in labels for row in part]
        # Words cut off by max_length are scored neither as gold nor as predictions: size max_length to the data.
        label_tensor = torch.tensor([align(tokens.word_ids(i), tags[i]) for i in range(len(tags))], dtype=torch.int32)
    elif not labelled:
        label_tensor = kind.targets(tokens["input_ids"], tokens["attention_mask"])
    else:
        label_tensor = torch.cat(labels)
    return {
        **encoded,
        "lengths": attention_mask.sum(1).to(torch.int32),
        "labels": label_tensor,
        "source": torch.cat(origin),
    }


def validation_rows(source: torch.Tensor, *, validation: float | list[str] | None, dev_sources: int, seed: int) -> torch.Tensor:
    """Which rows of the encoded dev set (dev sources, then named validation sources) only validate: a seeded
    fraction of every source, or every row of a named validation source. Without validation data: none."""
    if isinstance(validation, float):
        return validation_mask(source, validation, seed)
    return source >= dev_sources


def validation_mask(source: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Which examples fitness never sees: round(fraction * n) of each source's n examples (at least one, and at
    least one left for fitness), drawn by a generator seeded per (seed, source index). The draw depends on
    nothing else: not on the shard count, the device or the other sources."""
    from tasks.evolve import derive_seed

    mask = torch.zeros(len(source), dtype=torch.bool)
    for index in torch.unique(source).tolist():
        rows = torch.nonzero(source == index).flatten()
        if len(rows) < 2:
            raise DataError(f"dev source #{index} has {len(rows)} row(s): a validation fraction needs at least 2 per source")
        k = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        generator = torch.Generator().manual_seed(derive_seed(seed, "validation", index))
        mask[rows[torch.randperm(len(rows), generator=generator)[:k]]] = True
    return mask


def table(sources: str | Sequence[str], text_column: str, label_column: str | None, text_pair_column: str | None = None, words: bool = False):
    """The raw rows of an evaluation set as a pandas frame (what MLflow records as a run input, its digest
    included: the pair column is part of the data's identity). Words and tags are joined by spaces; without a
    label column (language modeling) the frame has none."""
    import pandas as pd

    frames = []
    for source in [sources] if isinstance(sources, str) else sources:
        texts, pairs, raw = read_source(source, text_column, label_column, text_pair_column, words=words)
        if words:
            texts, raw = [" ".join(t) for t in texts], [" ".join(map(str, tags)) for tags in raw]
        second = {} if pairs is None else {text_pair_column: pairs}
        labels = {} if label_column is None else {label_column: raw}
        frames.append(pd.DataFrame({text_column: texts, **second, **labels, "source": source}))
    return pd.concat(frames, ignore_index=True)


def batch_bounds(lengths: torch.Tensor, batch_size: int, batch_tokens: int | None = None, start: int = 0, stop: int | None = None) -> list[int]:
    """Where the batches of rows [start, stop) begin, and `stop`: consecutive examples, at most `batch_size` of
    them and, with `batch_tokens`, at most that many padded tokens (count x the batch's longest example).
    Greedy from `start`, so batches cut from any batch boundary are the ones cut from 0."""
    stop = len(lengths) if stop is None else stop
    if batch_tokens is None:
        return [*range(start, stop, batch_size), stop] if stop > start else [start]
    bounds, longest = [start], 0
    for i, length in enumerate(lengths[start:stop].tolist(), start):
        count = i - bounds[-1]  # examples already in the open batch
        if count and (count >= batch_size or (count + 1) * max(longest, length) > batch_tokens):
            bounds.append(i)
            longest = 0
        longest = max(longest, length)
    if stop > start:
        bounds.append(stop)
    return bounds


def shard_range(n_examples: int, batch_size: int, shards: int, shard: int, lengths: torch.Tensor | None = None, batch_tokens: int | None = None) -> range:
    """Examples of one shard: a contiguous run of whole batches (batch boundaries never depend on `shards`)."""
    if batch_tokens is None:
        n_batches = -(-n_examples // batch_size)
        first, last = (n_batches * shard) // shards, (n_batches * (shard + 1)) // shards
        return range(min(first * batch_size, n_examples), min(last * batch_size, n_examples))
    bounds = batch_bounds(lengths, batch_size, batch_tokens)
    n_batches = len(bounds) - 1
    first, last = (n_batches * shard) // shards, (n_batches * (shard + 1)) // shards
    return range(bounds[first], bounds[last])
