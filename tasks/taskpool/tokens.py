"""Token classification (NER): a tag per word, scored as entities with seqeval's strict IOB2 rules.

An example is a list of words with one tag each. Words are tokenised as split words and each word's tag sits
on its first sub-token (the rest, and padding, carry -100 and are not scored), so predictions are per word.
An entity is a B-X tag followed by every I-X right after it; an I-X that does not continue a B-X or I-X of the
same type starts nothing (seqeval's `mode="strict", scheme=IOB2`). A predicted entity is correct only where
the gold one has the same type, start and end.

A shard's statistics per group are integer counts per entity type (true positives, false positives, false
negatives) plus words and sentences, so they add up exactly; precision, recall and F1 are micro averages over
entity types, as seqeval's default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tasks.taskpool.base import Scorer, Task
from tasks.taskpool.data import DataError

IGNORE = -100  # the label of sub-tokens after a word's first, and of padding (transformers' ignore index)
_BEGIN, _INSIDE, _OUTSIDE = 0, 1, 2


def bio_scheme(id2label: Sequence[str], where: str) -> tuple[list[int], list[str]]:
    """Per label id its prefix (B, I or O) and its entity type; refuses tags that are not IOB2."""
    prefixes, types, bad = [], [], []
    for label in id2label:
        if label == "O":
            prefixes.append(_OUTSIDE)
            types.append("")
        elif label[:2] in ("B-", "I-") and label[2:]:
            prefixes.append(_BEGIN if label[0] == "B" else _INSIDE)
            types.append(label[2:])
        else:
            bad.append(label)
    if bad:
        raise DataError(f"{where}: tags {bad[:10]} are not IOB2 (O, B-<type>, I-<type>): entity F1 cannot read them")
    return prefixes, types


def entities(tags: Sequence[int], prefixes: Sequence[int], types: Sequence[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) of every strict-IOB2 entity in a sequence of label ids."""
    found, start, kind = set(), None, ""
    for j, tag in enumerate(tags):
        if start is not None and prefixes[tag] == _INSIDE and types[tag] == kind:
            continue
        if start is not None:
            found.add((start, j, kind))
            start = None
        if prefixes[tag] == _BEGIN:
            start, kind = j, types[tag]
    if start is not None:
        found.add((start, len(tags), kind))
    return found


class _EntityScorer(Scorer):
    def __init__(self, n_groups: int, prefixes: list[int], types: list[str]):
        self.prefixes, self.types = prefixes, types
        self.groups = [{"entities": {}, "sentences": 0, "words": 0, "correct_words": 0} for _ in range(n_groups)]

    def update(self, logits, labels, groups):
        predicted = logits.argmax(-1).cpu()
        labels, groups = labels.cpu(), groups.cpu().tolist()
        scored = labels != IGNORE
        for i, g in enumerate(groups):
            gold, guess = labels[i][scored[i]].tolist(), predicted[i][scored[i]].tolist()
            stats = self.groups[g]
            stats["sentences"] += 1
            stats["words"] += len(gold)
            stats["correct_words"] += sum(a == b for a, b in zip(gold, guess))
            true, found = entities(gold, self.prefixes, self.types), entities(guess, self.prefixes, self.types)
            for (_, _, kind), role in [*((e, 0) for e in true & found), *((e, 1) for e in found - true), *((e, 2) for e in true - found)]:
                stats["entities"].setdefault(kind, [0, 0, 0])[role] += 1

    def result(self):
        return [{**g, "entities": dict(sorted(g["entities"].items()))} for g in self.groups]


class TokenClassification(Task):
    name = "token_classification"

    def encode_labels(self, raw: Sequence, *, label2id, num_labels, source) -> list[list[int]]:
        """Word-level tag ids, one list per example: names through the models' label2id, or integer ids."""
        bio_scheme(sorted(label2id, key=label2id.get), f"{source}: the models' label2id")  # entity F1 needs IOB2 tags
        rows = [list(tags) for tags in raw]
        if rows and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for tags in rows for t in tags):
            ids = [[int(t) for t in tags] for tags in rows]
        else:
            unknown = sorted({str(t) for tags in rows for t in tags} - set(label2id))
            if unknown:
                raise DataError(f"{source}: tags {unknown[:10]} are not in the models' label2id {sorted(label2id)}")
            ids = [[label2id[str(t)] for t in tags] for tags in rows]
        out_of_range = sorted({i for tags in ids for i in tags if not 0 <= i < num_labels})
        if out_of_range:
            raise DataError(f"{source}: tag ids {out_of_range[:10]} outside 0..{num_labels - 1}")
        return ids

    def scorer(self, *, n_groups, num_labels, device):
        id2label = [name for name, _ in sorted(self.label2id.items(), key=lambda item: item[1])]
        if len(id2label) != num_labels:
            raise DataError(f"token classification reads entities from tag names: the models name {len(id2label)} of their {num_labels} labels")
        return _EntityScorer(n_groups, *bio_scheme(id2label, "the models' label2id"))

    def add(self, parts):
        total = {"entities": {}, "sentences": 0, "words": 0, "correct_words": 0}
        for part in parts:
            for key in ("sentences", "words", "correct_words"):
                total[key] += part[key]
            for kind, counts in part["entities"].items():
                total["entities"][kind] = [a + b for a, b in zip(total["entities"].get(kind, [0, 0, 0]), counts)]
        total["entities"] = dict(sorted(total["entities"].items()))
        return total

    def size(self, stats):
        return stats["sentences"]

    def metrics(self, stats):
        if stats["sentences"] == 0:
            raise DataError("no examples were evaluated")
        tp, fp, fn = (sum(counts[k] for counts in stats["entities"].values()) for k in range(3))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        accuracy = stats["correct_words"] / stats["words"] if stats["words"] else 0.0
        return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall, "token_accuracy": accuracy, "n": stats["sentences"]}

    def fisher_loss(self, logits, inputs):
        real = inputs["attention_mask"].bool()
        log_probs = logits.float().log_softmax(-1)[real]
        return torch.nn.functional.nll_loss(log_probs, log_probs.argmax(-1))

    def check_head(self, num_labels, architectures, where):
        if architectures and not any(a.endswith("ForTokenClassification") for a in architectures):
            raise DataError(f"{where}: a {', '.join(architectures)} checkpoint has no token classification head; task_type: token_classification needs one")


def align(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """Sub-token labels from word tags: each word's tag on its first sub-token, IGNORE elsewhere."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE if word is None or word == previous else tags[word])
        previous = word
    return labels
