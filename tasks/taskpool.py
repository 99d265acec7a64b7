"""The task pool: evaluation data, tokenised once per run, scored shard by shard into sufficient statistics.

A shard's result is a confusion matrix; metrics come from the summed matrix, never from averaging
per-shard scores (macro-F1 and Matthews correlation are not means). Shards are cut on batch boundaries,
so every example is always evaluated in the same batch with the same neighbours and padding: a model's
score is bit-identical for any number of shards.
"""

from __future__ import annotations

import codecs
import itertools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tasks.config import InputError

_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


# The encoded tensors a model reads; token_type_ids only where `encode` wrote them (pairs).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class DataError(InputError):
    """A data source that cannot be read or labelled; raised before any model runs."""


def read_source(source: str, text_column: str, label_column: str, text_pair_column: str | None = None) -> tuple[list[str], list[str] | None, list]:
    """Texts, their second texts (None without a pair column) and raw labels from a file, a `save_to_disk`
    folder or a hub dataset (`name` or `name:split`)."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    try:
        if path.is_file():
            fmt = _FILE_FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise DataError(f"{source}: unknown file type {path.suffix!r}; use one of {sorted(_FILE_FORMATS)}")
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
    return [str(t) for t in table[text_column]], pairs, list(table[label_column])


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


def encode_labels(raw: Sequence, label2id: dict[str, int], num_labels: int, source: str) -> torch.Tensor:
    """Integer labels pass through (checked against the label count); names go through the models' label2id."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw):
        ids = [int(v) for v in raw]
    else:
        unknown = sorted({str(v) for v in raw} - set(label2id))
        if unknown:
            raise DataError(f"{source}: labels {unknown[:10]} are not in the models' label2id {sorted(label2id)}")
        ids = [label2id[str(v)] for v in raw]
    out_of_range = sorted({i for i in ids if not 0 <= i < num_labels})
    if out_of_range:
        raise DataError(f"{source}: label ids {out_of_range[:10]} outside 0..{num_labels - 1}")
    return torch.tensor(ids, dtype=torch.long)


def encode(
    sources: str | Sequence[str],
    *,
    tokenizer,
    text_column: str,
    label_column: str,
    label2id: dict[str, int],
    num_labels: int,
    max_length: int,
    text_pair_column: str | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise one evaluation set (sources concatenated) into padded tensors plus per-example lengths and the
    index of the source each example came from (what per-domain fitness and the validation split group by).
    With a pair column every example is a pair of texts, and `token_type_ids` mark the second one where the
    tokenizer has segments."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    texts, pairs, labels, origin = [], [], [], []
    for index, source in enumerate(sources):
        source_texts, source_pairs, raw = read_source(source, text_column, label_column, text_pair_column)
        if not source_texts:
            raise DataError(f"{source}: no rows")
        texts += source_texts
        if source_pairs is not None:
            pairs += source_pairs
        labels.append(encode_labels(raw, label2id, num_labels, source))
        origin.append(torch.full((len(source_texts),), index, dtype=torch.int32))
    if text_pair_column is None:
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
    return {
        **encoded,
        "lengths": attention_mask.sum(1).to(torch.int32),
        "labels": torch.cat(labels),
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


def table(sources: str | Sequence[str], text_column: str, label_column: str, text_pair_column: str | None = None):
    """The raw rows of an evaluation set as a pandas frame (what MLflow records as a run input, its digest
    included: the pair column is part of the data's identity)."""
    import pandas as pd

    frames = []
    for source in [sources] if isinstance(sources, str) else sources:
        texts, pairs, raw = read_source(source, text_column, label_column, text_pair_column)
        second = {} if pairs is None else {text_pair_column: pairs}
        frames.append(pd.DataFrame({text_column: texts, **second, label_column: raw, "source": source}))
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


def confusion(
    model: torch.nn.Module, data: dict[str, torch.Tensor], rows: range, *, batch_size: int, num_labels: int, batch_tokens: int | None = None
) -> list[list[int]]:
    """Confusion-matrix counts (true label x predicted label) of `model` on the examples in `rows`."""
    return grouped_confusion(model, data, rows, batch_size=batch_size, num_labels=num_labels, batch_tokens=batch_tokens)[0]


@torch.inference_mode()
def grouped_confusion(
    model: torch.nn.Module,
    data: dict[str, torch.Tensor],
    rows: range,
    *,
    batch_size: int,
    num_labels: int,
    groups: torch.Tensor | None = None,
    n_groups: int = 1,
    batch_tokens: int | None = None,
) -> list[list[list[int]]]:
    """One confusion matrix per group (`groups[i]` in 0..n_groups-1 names example i's group; default: one group).
    Every example is scored in the same batch whatever the grouping, so the groups add up to `confusion`.
    The rows go to the model's device once and the counts stay there, so a GPU waits for the host only at the end."""
    device = next(model.parameters()).device
    cells = num_labels * num_labels
    counts = torch.zeros(n_groups * cells, dtype=torch.long, device=device)
    if len(rows) == 0:
        return counts.view(n_groups, num_labels, num_labels).tolist()
    bounds = batch_bounds(data["lengths"], batch_size, batch_tokens, rows.start, rows.stop)
    part = slice(rows.start, rows.stop)
    width = int(data["lengths"][part].max())
    inputs = {name: data[name][part, :width].to(device, non_blocking=True).long() for name in MODEL_INPUTS if name in data}
    group = groups[part].to(device).long() if groups is not None else torch.zeros(len(rows), dtype=torch.long, device=device)
    cell = group * cells + data["labels"][part].to(device).long() * num_labels
    widths = data["lengths"][part]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        batch = slice(start - rows.start, stop - rows.start)
        width = int(widths[batch].max())  # pad only to the longest example of this batch
        logits = model(**{name: tensor[batch, :width] for name, tensor in inputs.items()}).logits
        counts += torch.bincount(cell[batch] + logits.argmax(-1), minlength=n_groups * cells)
    return counts.view(n_groups, num_labels, num_labels).tolist()


def add_confusions(matrices: Sequence[Sequence[Sequence[int]]]) -> list[list[int]]:
    return np.sum(np.asarray(matrices, dtype=np.int64), axis=0).tolist()


AGGREGATES = ("pooled", "mean_domain", "worst_domain")


def aggregate_score(by_source: Sequence[Sequence[Sequence[int]]], metric: str, aggregate: str) -> float:
    """One score from per-source confusion counts: `pooled` is the metric of the summed counts (every example
    weighs the same); `mean_domain` the mean of the per-source metrics; `worst_domain` their minimum. Sources
    without examples (e.g. a named validation source, in the fitness counts) are left out."""
    present = [m for m in by_source if np.asarray(m).sum() > 0]
    if not present:
        raise DataError("no examples were evaluated")
    if aggregate == "pooled":
        return metrics(add_confusions(present))[metric]
    scores = [metrics(m)[metric] for m in present]
    if aggregate == "mean_domain":
        return float(np.mean(scores))
    if aggregate == "worst_domain":
        return float(min(scores))
    raise ValueError(f"unknown fitness aggregate {aggregate!r}; use one of {AGGREGATES}")


def metrics(matrix: Sequence[Sequence[int]]) -> dict[str, float]:
    """Accuracy, macro-F1 and Matthews correlation (scikit-learn) from summed confusion counts."""

    counts = np.asarray(matrix, dtype=np.int64)
    k = counts.shape[0]
    truth = np.repeat(np.repeat(np.arange(k), k), counts.ravel())
    predicted = np.repeat(np.tile(np.arange(k), k), counts.ravel())
    if truth.size == 0:
        raise DataError("no examples were evaluated")
    with warnings.catch_warnings():  # one domain's rows may hold a single label: the scores are still defined
        warnings.simplefilter("ignore", UserWarning)
        return _scores(truth, predicted)


def _scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(truth, predicted)),
        "n": int(truth.size),
    }
